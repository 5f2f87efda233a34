"""The HTML report, generated from a small real sweep run directory (local Ray, ~1 min)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import results

pytestmark = pytest.mark.sweep  # a small sweep, its report read

REPO = Path(__file__).resolve().parents[1]
STUDIES = ["mf", "neumf"]


def run_cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    argv = ["-c", code, *args] if code else ["-m", "orchestrator", *args]
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sweep and the report it writes (the `report` command's own run from the run
    directory is test_a_failed_report_keeps_the_earlier_figures's, and test_sweep.py's)."""
    storage = tmp_path_factory.mktemp("runs")
    # 3 complete trials per study, the fewest with parameter importances: ASHA's only rung
    # is the last epoch, so it prunes none
    proc = run_cli(
        "sweep",
        "--smoke",
        "--models",
        ",".join(STUDIES),
        "--baselines",
        "bias,pop",  # bias: a searched baseline's study, its figures too
        "--trials",
        "3",
        "--grace-period",
        "2",
        "--name",
        "r",
        "--storage",
        str(storage),
        "--wandb",
        "disabled",
        "--export",
        "false",  # the report is tested here, the export by the smoke run
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "UMAP of 400 items of mf" in proc.stdout  # the report's progress lines
    return storage / "r"


class Page(HTMLParser):
    """Every tag's attributes, and the cells of each <table>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[list[list[str]]] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self.in_cell = True
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.tables[-1][-1][-1] += data.strip()


@pytest.fixture(scope="module")
def page(run_dir: Path) -> Page:
    parsed = Page()
    parsed.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    parsed.close()
    return parsed


def test_every_image_is_an_embedded_png_and_nothing_is_external(run_dir: Path, page: Page) -> None:
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    expected = ["data-popularity", "data-activity", "coverage-ranking"] + [
        f"{kind}-{s}" for s in STUDIES for kind in ("history", "importance", "curves", "umap-items")
    ]
    expected += ["history-bias", "importance-bias"]  # a baseline's search: no curve, no map
    assert sorted(a["alt"] for t, a in page.tags if t == "img") == sorted(expected)
    for name in expected:
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 2048, name
    for src in images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2048
    links = [
        (tag, k, v)
        for tag, attrs in page.tags
        for k, v in attrs.items()
        if k in ("src", "href") and not (v or "").startswith("data:")
    ]
    assert links == [] and not [t for t, _ in page.tags if t in ("script", "link", "iframe")]


def test_tables_match_results_csv(run_dir: Path, page: Page) -> None:
    csv = pd.read_csv(run_dir / "results.csv")
    assert list(csv["study"]) == ["mf", "bias", "neumf", "pop"]
    assert len(page.tables) == 2  # rating prediction, top-N ranking
    for (name, rows), table in zip(csv.groupby("table", sort=False), page.tables, strict=True):
        header, *cells = table
        shown = pd.DataFrame(cells, columns=header)
        assert list(shown["study"]) == list(rows["study"]), name
        metrics = [c for c in header if c.startswith("test/")]
        assert ("test/rmse" in metrics) == (name == "rating"), name
        assert ("test/ndcg@10" in metrics) == (name == "ranking"), name
        for col in metrics:
            for cell, value in zip(shown[col], rows[col], strict=True):
                if pd.isna(value):
                    assert cell == ""
                else:  # "mean" or "mean ± std" (and a marker), rounded as in results.md
                    shown_value = float(cell.split(" ± ")[0].split(" (")[0])
                    half = 0.5 * 10 ** -results.decimals(col)
                    assert shown_value == pytest.approx(value, abs=half * 1.001), col


@pytest.mark.browser
def test_report_renders_in_a_headless_browser(run_dir: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for this test (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            (run_dir / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    # what the browser painted is the report (text, table, plots), not a blank page
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, len(colors or [])


def test_umap_coordinates_have_one_row_per_item(run_dir: Path) -> None:
    n_items = json.loads((run_dir / "data.json").read_text())["items"]
    for study in STUDIES:
        coords = pd.read_csv(run_dir / "figures" / f"umap-items-{study}.csv")
        assert len(coords) == n_items and coords["item"].is_unique
        assert {"item", "title", "x", "y"} <= set(coords.columns)
        assert coords[["x", "y"]].notna().all().all() and coords["x"].std() > 0


def test_report_without_viz_says_what_to_install(run_dir: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = run_cli("report", str(run_dir), code=code)
    assert proc.returncode == 2
    assert "pip install -e '.[viz]'" in proc.stderr and "matplotlib" in proc.stderr


def test_a_failed_report_keeps_the_earlier_figures(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import plots, report

    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("search", "wandb"))
    before = {p.name: p.read_bytes() for p in (copy / "figures").iterdir()}
    (copy / "figures" / "stale.png").write_bytes(b"an earlier report's figure")

    def broken(*args: object) -> None:
        raise RuntimeError("a plotting bug")

    monkeypatch.setattr(plots, "plot_activity", broken)
    with pytest.raises(RuntimeError, match="a plotting bug"):
        report.write_report(copy, progress=False)
    kept = {p.name: p.read_bytes() for p in (copy / "figures").iterdir()}
    assert kept == {**before, "stale.png": b"an earlier report's figure"}  # untouched
    assert not [p for p in copy.iterdir() if p.name.startswith(".figures")]  # no leftovers
    monkeypatch.undo()
    report.write_report(copy, progress=False)
    names = {p.name for p in (copy / "figures").iterdir()}
    assert "stale.png" not in names and set(before) == names  # this report's figures only
