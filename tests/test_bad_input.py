"""Careless and hostile input: one clear line that names the file, line or key, exit code 2,
no traceback, and nothing that was valid before is changed.

Each case builds its input in a fresh folder and runs the command line in this process
(every case fails before Ray starts); the folder's files are compared before and after.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import orchestrator.models  # noqa: F401  (registers every model)
from orchestrator import results, serve
from orchestrator.cli import main
from orchestrator.config import DataConfig, SweepConfig, to_dict
from orchestrator.data import load_dataset
from orchestrator.export import export_model
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import create_model
from orchestrator.plan import resolved

TINY = "synthetic:users=60,items=90,interactions=1500"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one valid export (mf on tiny synthetic data)."""
    data = load_dataset(DataConfig(dataset=TINY, eval_negatives=0))
    model = create_model("mf", DataSpec.from_data(data), "rating", dim=4)
    folder = tmp_path_factory.mktemp("export")
    export_model(model, data, folder / "mf.onnx")
    return folder


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def describe(text: str | bytes, *flags: str) -> Callable[[Path, Path], list[str]]:
    def build(tmp: Path, _: Path) -> list[str]:
        return [
            "data",
            "describe",
            "--dataset",
            f"csv:{write(tmp, 'bad.csv', text)}",
            "--eval-negatives",
            "0",
            *flags,
        ]

    return build


def release(name: str, ratings: str, text: str) -> Callable[[Path, Path], list[str]]:
    """A MovieLens release folder unpacked by hand, with `text` as its ratings file."""

    def build(tmp: Path, _: Path) -> list[str]:
        write(tmp / name, ratings, text)
        movies = "movies.dat" if ratings.endswith(".dat") else "movies.csv"
        write(
            tmp / name,
            movies,
            "1193::A (1975)::Drama\n"
            if movies == "movies.dat"
            else "movieId,title,genres\n1,A (1975),Drama\n",
        )
        return [
            "data",
            "describe",
            "--dataset",
            name,
            "--data-dir",
            str(tmp),
            "--eval-negatives",
            "0",
        ]

    return build


def sweep_file(values: dict) -> Callable[[Path, Path], list[str]]:
    def build(tmp: Path, _: Path) -> list[str]:
        return [
            "sweep",
            "--config",
            str(write(tmp, "sweep.yaml", yaml.safe_dump(values))),
            "--storage",
            str(tmp / "runs"),
        ]

    return build


def argv(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, _: [a.replace("{tmp}", str(tmp)) for a in args]


def run_dir(
    sweep_yaml: str | None, *extra: str, command: str = "sweep --resume"
) -> Callable[[Path, Path], list[str]]:
    """A run directory `runs/r` holding `sweep_yaml` (and `extra` empty files)."""

    def build(tmp: Path, _: Path) -> list[str]:
        folder = tmp / "runs" / "r"
        folder.mkdir(parents=True)
        if sweep_yaml is not None:
            write(folder, "sweep.yaml", sweep_yaml)
        for name in extra:
            write(folder, name, "")
        return [*command.split(), str(folder)]

    return build


def whole_config() -> str:
    cfg = resolved(SweepConfig(name="r", models=("mf",)))
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def truncated_config() -> str:
    text = whole_config()
    return text[: text.index("train:")]  # cut mid-file: the later sections are missing


def model_copy(change: Callable[[Path], None], *flags: str) -> Callable[[Path, Path], list[str]]:
    """The valid export copied into the case's folder, then broken by `change`."""

    def build(tmp: Path, exported: Path) -> list[str]:
        folder = tmp / "models"
        shutil.copytree(exported, folder)
        change(folder)
        return ["recommend", str(folder / "mf.onnx"), "--user", "1", *flags]

    return build


def edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        meta = json.loads((folder / name).read_text())
        edit(meta)
        (folder / name).write_text(json.dumps(meta))

    return change


def flip_byte(name: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        raw = bytearray((folder / name).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (folder / name).write_bytes(bytes(raw))

    return change


CASES = [
    # --- data files ----------------------------------------------------------------------
    (
        "csv-inf-rating",
        describe("user,item,rating\n1,2,4\n3,4,inf\n"),
        r"bad\.csv, line 3: bad rating",
    ),
    (
        "csv-nan-rating",
        describe("user,item,rating\n1,2,4\n3,4,nan\n5,6,3\n"),
        r"bad\.csv, line 3: missing rating",
    ),
    (
        "csv-text-rating",
        describe("user,item,rating\n1,2,4\n3,4,5\n5,6,five\n"),
        r"bad\.csv, line 4: bad rating 'five'",
    ),
    ("csv-missing-user", describe("user,item\n1,2\n,3\n"), r"bad\.csv, line 3: missing user"),
    (
        "csv-rating-beyond-any-scale",
        describe("user,item,rating\n1,2,4\n3,4,1e30\n"),
        r"bad\.csv, line 3: bad rating .*beyond \+-1e\+06",
    ),
    (
        "csv-rating-off-the-declared-scale",
        describe("user,item,rating\n1,2,4\n3,4,5\n3,2,7\n", "--rating-range", "0.5,5"),
        r"data\.rating_range \[0\.5, 5\]: 1 of 3 ratings of 'csv:.*bad\.csv' lie outside it, "
        r"the first: user 3, item 2, rating 7 \(interaction 3 of the source\)",
    ),
    (
        "declared-scale-upside-down",
        describe("user,item,rating\n1,2,4\n", "--rating-range", "5,1"),
        r"data\.rating_range=\[5\.0, 1\.0\]: expected \[lo, hi\], lo < hi",
    ),
    (
        "csv-id-with-surrounding-space",  # ' 1' and '1' would be two users
        describe("user,item,rating\n1,a,4\n 1,b,5\n"),
        r"bad\.csv, line 3: bad user \"' 1' \(surrounding whitespace\)\"",
    ),
    (
        "csv-repeated-column",
        describe("user,item,rating,rating\n1,2,4,5\n"),
        r"bad\.csv: column\(s\) \['rating'\] appear more than once",
    ),
    (
        "csv-id-beyond-int64",
        describe("user,item\n1,2\n99999999999999999999,3\n"),
        r"bad\.csv, line 3: bad user .*beyond int64",
    ),
    (
        "csv-bad-timestamp-line",
        describe("user,item,timestamp\n1,2,100\n1,3,101\n2,2,102\n2,3,103\n3,4,yesterday\n"),
        r"bad\.csv, line 6: bad timestamp 'yesterday'",
    ),
    (
        "csv-bad-iso-timestamp",
        describe("user,item,timestamp\n1,2,2020-01-01\n1,3,2020-13-45\n"),
        r"bad\.csv, line 3: bad timestamp",
    ),
    (
        "csv-extra-fields",
        describe("user,item,rating\n1,2,4\n3,4,5,6,7\n"),
        r"bad\.csv: malformed CSV: .*line 3",
    ),
    ("csv-header-only", describe("user,item\n"), r"bad\.csv: no rows"),
    ("csv-empty-file", describe(""), r"bad\.csv: malformed CSV"),
    ("csv-not-utf8", describe(b"user,item\n1,\xff\xfe\n"), r"bad\.csv: malformed CSV"),
    ("csv-missing-column", describe("uid,item\n1,2\n"), r"bad\.csv: missing column.*'user'"),
    (
        "csv-no-such-file",
        argv("data", "describe", "--dataset", "csv:{tmp}/none.csv"),
        r"none\.csv: no such file",
    ),
    (
        "temporal-without-timestamps",
        describe("user,item\n1,2\n1,3\n1,4\n", "--split", "temporal:0.7,0.1,0.2"),
        r"split 'temporal:0\.7,0\.1,0\.2': .* has no timestamps",
    ),
    ("unknown-split", describe("user,item\n1,2\n", "--split", "half"), r"unknown split 'half'"),
    (
        "split-not-shipped",
        describe("user,item\n1,2\n", "--split", "u1"),
        r"split 'u1': dataset .* does not ship it",
    ),
    (
        "ml1m-inf-rating",
        release("ml-1m", "ratings.dat", "1::1193::5::978300760\n2::661::inf::978302109\n"),
        r"ratings\.dat, line 2: expected 4 '::'-separated fields",
    ),
    (
        "ml1m-id-beyond-int64",
        release(
            "ml-1m",
            "ratings.dat",
            "1::1193::5::978300760\n99999999999999999999::661::3::978302109\n",
        ),
        r"ratings\.dat, line 2: expected .*integers within int64",
    ),
    (
        "ml20m-nan-rating",
        release(
            "ml-20m",
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,nan,964981247\n",
        ),
        r"ratings\.csv, line 3: expected .*finite numbers",
    ),
    # --- dataset specs ---------------------------------------------------------------------
    (
        "synthetic-bad-int",
        argv("data", "describe", "--dataset", "synthetic:users=many"),
        r"users='many' is not an integer",
    ),
    (
        "synthetic-unknown-key",
        argv("data", "describe", "--dataset", "synthetic:people=5"),
        r"unknown key 'people'",
    ),
    (
        "csv-bad-option",
        argv("data", "describe", "--dataset", "csv:{tmp}/x.csv?uid=a"),
        r"bad option 'uid=a'",
    ),
    ("unknown-dataset", argv("data", "describe", "--dataset", "ml-7m"), r"unknown dataset 'ml-7m'"),
    (
        "ncf-missing-files",
        argv("data", "describe", "--dataset", "ncf:{tmp}/ml-1m"),
        r"ml-1m\.train\.rating",
    ),
    # --- flags -----------------------------------------------------------------------------
    ("train-unknown-model", argv("train", "--model", "svdpp", "--dataset", TINY), r"svdpp"),
    (
        "train-bad-hparam-type",
        argv("train", "--model", "mf", "--set", "lr=fast", "--dataset", TINY),
        r"lr='fast'.*expected float",
    ),
    (
        "train-unknown-hparam",
        argv("train", "--model", "mf", "--set", "depth=3", "--dataset", TINY),
        r"unknown hyperparameter.*depth",
    ),
    (
        "train-task-not-served",
        argv("train", "--model", "mf", "--task", "sequential", "--dataset", TINY),
        r"sequential",
    ),
    (
        "train-k-beyond-catalogue",
        argv(
            "train",
            "--model",
            "pop",
            "--task",
            "ranking",
            "--ks",
            "[10, 5000]",
            "--dataset",
            TINY,
            "--eval-negatives",
            "0",
        ),
        r"ks: \[5000\]: expected cut-offs from 1 to \d+",
    ),
    (
        "train-no-cuda",
        argv(
            "train",
            "--model",
            "mf",
            "--device",
            "cuda:3",
            "--dataset",
            TINY,
            "--eval-negatives",
            "0",
        ),
        r"device='cuda:3'",
    ),
    (
        "sweep-zero-cpus",
        argv("sweep", "--cpus-per-trial", "0", "--storage", "{tmp}/runs"),
        r"cpus_per_trial=0",
    ),
    (
        "sweep-negative-gpus",
        argv("sweep", "--gpus-per-trial", "-2", "--storage", "{tmp}/runs"),
        r"gpus_per_trial=-2",
    ),
    (
        "sweep-zero-trials",
        argv("sweep", "--trials", "0", "--storage", "{tmp}/runs"),
        r"trials must be >= 1",
    ),
    (
        "sweep-trials-that-never-end",
        argv("sweep", "--trials", str(10**26), "--storage", "{tmp}/runs"),
        r"trials=10+, epochs=0: at most 10,000 trials per study",
    ),
    (
        "sweep-epochs-that-never-end",
        argv("sweep", "--epochs", str(10**12), "--storage", "{tmp}/runs"),
        r"at most 10,000 trials per study and 100,000 epochs",
    ),
    (
        "train-batch-beyond-memory",
        argv("train", "--model", "mf", "--dataset", TINY, "--set", "batch_size=1000000000"),
        r"batch_size.*an int from 1 to 16,777,216",
    ),
    (
        "sweep-unknown-model",
        argv("sweep", "--models", "mf,svdpp", "--storage", "{tmp}/runs"),
        r"svdpp",
    ),
    (
        "sweep-bad-budget",
        argv("sweep", "--time-budget", "soon", "--storage", "{tmp}/runs"),
        r"soon",
    ),
    ("export-k-zero", run_dir(whole_config(), command="export -k 0"), r"-k 0: expected"),
    # --- sweep files -----------------------------------------------------------------------
    ("sweep-file-missing", argv("sweep", "--config", "{tmp}/none.yaml"), r"none\.yaml"),
    (
        "sweep-file-bad-yaml",
        lambda tmp, _: ["sweep", "--config", str(write(tmp, "s.yaml", "models: [mf\ntrials: 3\n"))],
        r"s\.yaml.*line",
    ),
    ("sweep-file-unknown-key", sweep_file({"modles": ["mf"]}), r"sweep\.yaml.*'modles'"),
    ("folds-one", sweep_file({"data": {"folds": 1}}), r"data\.folds: 1: expected K >= 2"),
    (
        "folds-mixing-protocols",
        sweep_file({"data": {"folds": ["u1", "ua"]}}),
        r"data\.folds: \['u1', 'ua'\] mixes protocols",
    ),
    (
        "folds-beside-another-split",
        sweep_file({"data": {"folds": 3, "split": "temporal:0.7,0.1,0.2"}}),
        r"data\.split='temporal:0\.7,0\.1,0\.2' with data\.folds: the search runs on the "
        r"first fold \('kfold:1/3'\)",
    ),
    (
        "space-string-for-int",
        sweep_file({"models": ["mf"], "search_space": {"mf": {"dim": {"value": "64"}}}}),
        r"search_space\.mf\.dim: '64' is not int",
    ),
    (
        "space-float-bound-of-int",
        sweep_file(
            {
                "models": ["mf"],
                "search_space": {
                    "mf": {"dim": {"distribution": "int_uniform", "min": 8, "max": 64.5}}
                },
            }
        ),
        r"search_space\.mf\.dim: 64\.5 is not int",
    ),
    (
        "space-float-distribution-of-int",
        sweep_file(
            {
                "models": ["mf"],
                "search_space": {
                    "mf": {"dim": {"distribution": "log_uniform_values", "min": 8, "max": 64}}
                },
            }
        ),
        r"search_space\.mf\.dim: dim is int",
    ),
    (
        "space-value-out-of-range",
        sweep_file({"models": ["mf"], "search_space": {"mf": {"dim": {"values": [0, 8]}}}}),
        r"search_space\.mf\.dim: .*dim=0",
    ),
    (
        "space-unknown-param",
        sweep_file({"models": ["mf"], "search_space": {"mf": {"depth": {"values": [1, 2]}}}}),
        r"search_space\.mf\.depth",
    ),
    (
        "space-unknown-model",
        sweep_file({"models": ["mf"], "search_space": {"neumf": {"dim": {"values": [8]}}}}),
        r"search_space\.neumf: not a model",
    ),
    (
        "baseline-learned",
        sweep_file({"models": ["mf"], "baselines": ["mf"]}),
        r"baselines: 'mf' is a learned model",
    ),
    ("baseline-wrong-task", sweep_file({"models": ["mf"], "baselines": ["bias:ranking"]}), r"bias"),
    ("wandb-bad-mode", sweep_file({"models": ["mf"], "wandb": "sometimes"}), r"sometimes"),
    (
        "yaml-number-read-as-text",  # YAML 1.1 reads 1e-4 (no dot) as a string
        lambda tmp, _: [
            "sweep",
            "--config",
            str(write(tmp, "s.yaml", "models: [mf]\ntrain:\n  checkpoint_every_s: 1e-4\n")),
        ],
        r"train\.checkpoint_every_s: expected float, got '1e-4' \(YAML reads a number like",
    ),
    # --- run directories -------------------------------------------------------------------
    ("results-no-dir", argv("results", "{tmp}/runs/none"), r"none"),
    ("report-not-a-run", run_dir(None, command="report"), r"not a sweep run directory"),
    ("export-no-checkpoints", run_dir(whole_config(), command="export"), r"no checkpoints"),
    ("resume-empty-sweep-yaml", run_dir(""), r"sweep\.yaml is not the whole config"),
    (
        "resume-truncated-sweep-yaml",
        run_dir(truncated_config()),
        r"sweep\.yaml is not the whole config .*missing key",
    ),
    ("resume-no-experiment", run_dir(whole_config()), r"no experiment to continue"),
    (
        "name-of-an-existing-run",
        lambda tmp, _: (
            write(tmp / "runs" / "taken", "sweep.yaml", whole_config())
            and ["sweep", "--name", "taken", "--storage", str(tmp / "runs")]
        ),
        r"already holds a run \(sweep\.yaml\); continue it with --resume",
    ),
    (
        "name-of-a-folder-with-a-results-table",
        lambda tmp, _: (
            write(tmp / "runs" / "taken", "results.csv", "study\nmf\n")
            and ["sweep", "--name", "taken", "--storage", str(tmp / "runs")]
        ),
        r"runs/taken already holds a run \(results\.csv\)",
    ),
    *[
        (
            f"run-name-{label}",
            argv("sweep", "--name", name, "--storage", "{tmp}/runs"),
            r"name: .*: a run name is one folder name",
        )
        for label, name in (("up", "../../etc"), ("dotdot", ".."), ("nested", "a/b"))
    ],
    # --- exported models -------------------------------------------------------------------
    ("model-no-such-file", argv("recommend", "{tmp}/none.onnx", "--user", "1"), r"none\.onnx"),
    (
        "model-sidecar-not-json",
        model_copy(lambda f: (f / "mf.json").write_text("{")),
        r"mf\.json: not valid JSON",
    ),
    (
        "model-topk-graph-changed",
        model_copy(flip_byte("mf.topk.onnx")),
        r"mf\.topk\.onnx: content differs",
    ),
    ("model-forward-graph-changed", model_copy(flip_byte("mf.onnx")), r"mf\.onnx: content differs"),
    (
        "model-arrays-missing",
        model_copy(lambda f: (f / "mf.npz").unlink()),
        r"mf\.npz, which is missing",
    ),
    (
        "model-sidecar-disagrees",
        model_copy(
            edit_json("mf.json", lambda m: m["data"].update(n_items=m["data"]["n_items"] + 1))
        ),
        r"mf\.json: the sidecar, id maps and graph disagree",
    ),
    (
        "model-sidecar-incomplete",
        model_copy(edit_json("mf.json", lambda m: m.pop("forward"))),
        r"mf\.json: names no forward graph",
    ),
    ("recommend-k-zero", model_copy(lambda f: None, "-k", "0"), r"-k 0: expected"),
    (
        "recommend-non-ascii-digit",  # an Arabic-Indic five is no user 5
        model_copy(lambda f: None, "--user", "\u0665"),
        r"--user '\u0665': this model's user ids are integers",
    ),
]


@pytest.mark.parametrize("build,pattern", [pytest.param(b, p, id=i) for i, b, p in CASES])
def test_bad_input_gets_one_clear_line(
    build, pattern: str, tmp_path: Path, exported: Path, capsys: pytest.CaptureFixture
) -> None:
    args = build(tmp_path, exported)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err  # one line, at the end
    assert "Traceback" not in err and re.search(pattern, errors[0]), err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: after.get(p) for p in before} == before  # nothing valid changed or removed


def test_there_are_forty_cases_across_the_groups() -> None:
    assert len(CASES) >= 40


def test_a_crafted_checkpoint_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"

    class Payload:  # unpickling this would run a shell command
        def __reduce__(self):  # noqa: ANN204
            return (subprocess.call, (["touch", str(marker)],))

    folder = tmp_path / "runs" / "r"
    write(
        folder,
        "sweep.yaml",
        yaml.safe_dump(
            to_dict(
                resolved(
                    SweepConfig(
                        name="r", models=("mf",), data=DataConfig(dataset=TINY, eval_negatives=0)
                    )
                )
            )
        ),
    )
    folder.joinpath("checkpoints").mkdir()
    torch.save(
        {
            "model": "mf",
            "task": "rating",
            "hparams": {},
            "spec": {},
            "state_dict": {},
            "meta": Payload(),
        },
        folder / "checkpoints" / "mf.pt",
    )
    assert main(["export", str(folder)]) == 1  # the export of that study failed
    assert "not a recsweep checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_control_characters_in_titles_never_reach_the_terminal() -> None:
    result = {
        "model": "mf",
        "user": "1\x1b]0;owned\x07",
        "note": "n",
        "cold_start": False,
        "items": [{"rank": 1, "item": "7", "score": 1.0, "title": "\x1b[2J\x1b[31mRed\x9b"}],
    }
    text = serve.render(result)
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text)
    assert "?[2J?[31mRed?" in text


def test_csv_cells_cannot_carry_formulas(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"title": ['=HYPERLINK("http://x")', "+1", "Heat (1995)", None], "n": [1, 2, 3, 4]}
    )
    results.save_frame(frame, tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["title"].tolist()[:3] == ['\'=HYPERLINK("http://x")', "'+1", "Heat (1995)"]
    assert back["n"].tolist() == [1, 2, 3, 4]


WRITER = """
import sys, numpy as np, pandas as pd
sys.path.insert(0, {repo!r})
from pathlib import Path
from orchestrator.results import save_frame
rows = [200_000, 300_000]
frames = [pd.DataFrame({{"a": np.arange(n), "b": np.arange(n) * 0.5}}) for n in rows]
print("ready", flush=True)
i = 0
while True:
    save_frame(frames[i % 2], Path({path!r}))
    i += 1
"""


def test_a_table_written_while_killed_is_old_or_new(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    results.save_frame(pd.DataFrame({"a": np.arange(5), "b": np.zeros(5)}), path)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    seen = set()
    for delay in (0.05, 0.13, 0.21, 0.34):
        time.sleep(delay)
        seen.add(len(pd.read_csv(path)))  # a reader while it writes
    proc.kill()  # SIGKILL: no clean-up runs
    proc.wait()
    seen.add(len(pd.read_csv(path)))
    assert seen <= {5, 200_000, 300_000}, seen  # never a table with rows missing
    assert len(pd.read_csv(path)) in (5, 200_000, 300_000)
