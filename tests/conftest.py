"""Shared fixtures. Real data comes from ../shared/data (never copied into the repository).

The suite runs in tiers by cost, the markers declared in pyproject.toml: `ray` (a local
Ray), `sweep` (a whole sweep), `cluster` (a simulated multi-node cluster), `browser`
(chromium), `scale` (a million ratings). A test that takes `local_ray` is marked `ray`, and
one that takes `smoke_run` is marked `sweep`, whatever its module says: the fast tier can
never start either.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SECRET, SMOKE_STUDIES, run_cli

from orchestrator.internals import FORCE_FALLBACKS

SHARED_DATA = Path(
    os.environ.get("RECSWEEP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
MARKED_BY_FIXTURE = {"local_ray": "ray", "smoke_run": "sweep"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def pytest_sessionfinish(session: pytest.Session) -> None:
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real MovieLens 100K release folder (u.data, u.item, u1..u5/ua/ub)."""
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").exists():
        pytest.fail(f"the real MovieLens 100K is expected at {path} (set RECSWEEP_SHARED_DATA)")
    return path


@pytest.fixture
def local_ray() -> Iterator[None]:
    """The suite's one local Ray, started as a sweep starts it (`cluster.connect`) by the
    first test that needs it and kept for the next: in-process sweeps and Tune experiments
    share its start-up and its worker processes."""
    import ray

    from orchestrator.cluster import connect
    from orchestrator.config import SweepConfig

    if not ray.is_initialized():
        connect(SweepConfig())
    yield


@pytest.fixture
def no_shared_ray() -> Iterator[None]:
    """For a test that starts a Ray of its own (a simulated cluster, one CPU), or that must
    meet none (a sweep that fails before it connects): the shared one is shut down first,
    and whatever the test started after it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's ML project folder, with packages of its own named `data` and `models`
    (the commonest folder names there): no command may import them."""
    folder = tmp_path_factory.mktemp("project")
    for name in ("data", "models"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('the project\\'s own {name} package was imported')\n"
        )
    (folder / "data" / "ratings.csv").write_text("user,item,rating\n1,2,5\n")
    return folder


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, project: Path) -> Path:
    """The suite's one `sweep --smoke`, as a user runs it, shared by every test that reads a
    finished run (the tables, the trials, W&B, the exports, the report)."""
    storage = tmp_path_factory.mktemp("runs")
    # a key in the environment must never reach the run directory, even offline
    # and with every fallback of orchestrator.internals forced: the sweep must not need them;
    # run from a project folder holding data/ and models/ packages of its own
    proc = run_cli(
        "sweep",
        "--smoke",
        "--name",
        "smoke",
        "--storage",
        str(storage),
        "--json",
        env={"WANDB_API_KEY": SECRET, FORCE_FALLBACKS: "1"},
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # no library's Python warning reaches the user (the exporter's once did, in a race)
    assert "Warning:" not in proc.stdout + proc.stderr, proc.stderr[-4000:]
    # nor Ray's and Tune's start-up lines, box and hints a user cannot act on (Ray's warning
    # about its token-auth default is quieted in internals: tests/test_sweep_control.py)
    for banner in (
        "Started a local Ray instance",
        "Configuration for experiment",
        "View detailed results here",
        "tensorboard --logdir",
    ):
        assert banner not in proc.stdout + proc.stderr, banner
    assert re.search(r"^\[mf\] trial \w+ finished: 1/2 done", proc.stderr, re.M), proc.stderr[
        -3000:
    ]
    # --json: stdout is one JSON object, the progress went to stderr
    (line,) = proc.stdout.splitlines()
    summary = json.loads(line)
    assert summary["run_dir"] == str(storage / "smoke") and summary["exit_code"] == 0
    assert [r["study"] for r in summary["results"]] == SMOKE_STUDIES
    assert set(summary["exports"].values()) == {"ok"} and "search:" in proc.stderr
    assert Path(summary["files"]["optuna.journal"]).is_file()
    # the report's progress lines (tests/test_report.py reads the page)
    assert "UMAP of" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return storage / "smoke"
