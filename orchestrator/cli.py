"""`python -m orchestrator <command>`: the command line.

Each command is a small function that parses its flags, calls the library, and prints:
here `sweep`, `results` and `train`, and the parser, `main` and its exit codes; the other
commands and the flags they share are `commands`'. Heavy imports (torch, ray) happen inside
the commands so `--help` stays instant and the ONNX `recommend` path never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.commands import (
    JSON_HELP,
    add_data_args,
    add_data_parser,
    add_export_parsers,
    add_models_parser,
    add_report_parser,
    data_flags,
    json_result,
)
from orchestrator.config import (
    DataConfig,
    add_config_args,
    config_from_args,
    dotted,
    flag_values,
    from_dict,
    parse_sets,
)

if TYPE_CHECKING:
    import pandas as pd


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.config import SweepConfig
    from orchestrator.plan import load_config, merged
    from orchestrator.sweep import run_sweep

    overrides = flag_values(SweepConfig, args)
    data = data_flags(args)
    for layer in ({"data": data} if data else {}, dotted(parse_sets(args.set))):
        overrides = merged(overrides, layer)
    if args.resume:
        if args.config or overrides or args.smoke:
            raise ValueError(
                "--resume RUN_DIR continues a sweep as it was configured; "
                "give no other settings with it"
            )
        return json_result(args, lambda: summary(run_sweep(None, resume=args.resume)))
    cfg = load_config(args.config, overrides, smoke=args.smoke)
    return json_result(args, lambda: summary(run_sweep(cfg)))


def summary(run_dir: object) -> tuple[int, dict]:
    """A finished sweep's exit code (`outcome`) and what `--json` prints of it: the run
    directory, its files, and the results table's rows."""
    from pathlib import Path

    from orchestrator.journal import JOURNAL
    from orchestrator.rundir import RESULTS, TRIALS, RunDir

    run_dir = Path(str(run_dir))
    frame = RunDir(run_dir).results
    files = {
        name: str(run_dir / name)
        for name in (
            "results.csv",
            RESULTS,
            "results.md",
            TRIALS,
            "env.json",
            JOURNAL,
            "report.html",
        )
        if (run_dir / name).exists()
    }
    exports = (
        dict(zip(frame["study"], frame["export"], strict=True)) if "export" in frame.columns else {}
    )
    return outcome(frame), {
        "run_dir": str(run_dir),
        "files": files,
        "exports": {k: v for k, v in exports.items() if isinstance(v, str) and v},
        "results": json.loads(frame.to_json(orient="records")),
    }


def outcome(frame: pd.DataFrame) -> int:
    """The exit code of a sweep that ran to its end, from its results table: 0 when every
    study has a tested model and every export passed, else 1, naming what is missing (an
    interrupted sweep raised KeyboardInterrupt instead: 128 + the signal)."""
    empty = frame.loc[frame["status"] != "ok", "study"].tolist()
    exports = frame["export"] if "export" in frame.columns else None
    failed = (
        []
        if exports is None
        else frame.loc[exports.astype(str).str.startswith("failed"), "study"].tolist()
    )
    if empty:
        print(
            f"error: no tested model for {', '.join(empty)} (see the table's status)",
            file=sys.stderr,
        )
    if failed:
        print(f"error: ONNX export failed for {', '.join(failed)}", file=sys.stderr)
    return 1 if empty or failed else 0


def cmd_results(args: argparse.Namespace) -> int:
    from orchestrator import results
    from orchestrator.across import across_runs
    from orchestrator.data.splits import fold_splits
    from orchestrator.rundir import RunDir

    runs = [RunDir(path) for path in args.run_dir]
    if len(runs) == 1 and args.format != "latex":
        frame = runs[0].trials if args.trials else runs[0].results
        print(results.render(frame, args.format, args.columns), end="")
        return 0
    if args.trials or args.format == "json":
        raise ValueError(
            "results: --trials and --format json take one run directory; several runs (or "
            "--format latex) make one table of their results in md, latex or csv"
        )
    labels = {}
    for run in runs:
        data = run.config.data
        name = data.dataset if len(data.dataset) <= 24 else run.path.name
        folds = fold_splits(data.folds)
        split = f"{len(folds)}-fold" if folds else data.split
        label = f"{name} {split}"
        labels[label if label not in labels else f"{run.path.name} {split}"] = run.results
    print(across_runs(labels, args.format), end="")
    return 0


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    from orchestrator.config import SweepConfig

    p = commands.add_parser(
        "sweep",
        help="hyperparameter search over the models on Ray Tune",
        description="Every key of a sweep file is a flag below or a dotted --set: "
        "--set train.ks=[5,10], --set data.min_rating=4, "
        "--set search_space.mf.dim.values=[32,64]. Precedence: the --config file, then "
        "--smoke, then flags.",
    )
    p.add_argument("--config", help="sweep YAML file (CLI flags override it)")
    add_config_args(p, SweepConfig)
    add_data_args(p, sweep=True)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any key of the sweep file, dotted (train.ks=[5,10]); repeatable",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the whole pipeline in seconds: 2 trials, 2 epochs, small synthetic data",
    )
    p.set_defaults(func=cmd_sweep)

    r = commands.add_parser(
        "results", help="print a sweep's results table again, or one table of several runs"
    )
    r.add_argument(
        "run_dir",
        nargs="+",
        help="the sweep's run directory; several: one table of them all, a column group "
        "per run (its dataset and split)",
    )
    r.add_argument("--format", default="md", choices=("md", "csv", "json", "latex"))
    r.add_argument("--trials", action="store_true", help="every trial of every study instead")
    r.add_argument(
        "--columns",
        default="main",
        choices=("main", "all"),
        help="md: the main columns (at most 14 a table) or all of them (csv and json: all)",
    )
    r.set_defaults(func=cmd_results)


def cmd_train(args: argparse.Namespace) -> int:
    from orchestrator.config import TrainConfig
    from orchestrator.engine.single_run import train_one, validate_request

    hparams: dict[str, object] = dict(parse_sets(args.set))  # strings as typed, then epochs
    if args.epochs is not None:
        hparams["epochs"] = args.epochs
    # Everything the user typed is checked before any data is loaded or model trained.
    task = validate_request(args.model, args.task, hparams)
    train_cfg = config_from_args(TrainConfig, args)
    from orchestrator.data import load_dataset

    data_cfg = from_dict(DataConfig, data_flags(args), where="--")
    data = load_dataset(data_cfg)
    print(
        f"train: {args.model} ({task}) on {data.name}, split {data.split_name}: "
        f"{data.n_users} users, {data.n_items} items, {len(data.train)} train rows",
        file=sys.stderr,
    )
    metrics = train_one(
        args.model,
        data,
        task,
        hparams,
        train_cfg,
        out_dir=args.out,
        progress=not args.quiet,
        data_cfg=data_cfg,
    )
    for key, value in metrics.items():
        if key.startswith(("val/", "test/")):
            print(f"{key:<16} {value:.4f}")
    print(f"status: {metrics['status']} ({metrics['message']})")
    if args.out and metrics["status"] != "diverged":  # a diverged run writes nothing
        print(f"wrote metrics.json, config.json, checkpoint.pt to {args.out}")
    if args.json:
        print(json.dumps(metrics))
    return 1 if metrics["status"] == "diverged" else 0


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    from orchestrator.config import TrainConfig

    p = commands.add_parser(
        "train",
        help="train and evaluate one configuration (no Ray)",
        description="Train one model configuration with the shared loop, "
        "print validation and test metrics, and write them with the "
        "resolved config and the best checkpoint to --out.",
    )
    p.add_argument("--model", required=True, help="a registered model (mf, autorec, ...)")
    p.add_argument(
        "--task",
        default=None,
        help="rating, ranking or sequential (default: the model's first task)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter of the model, e.g. --set lr=0.01 (repeatable)",
    )
    p.add_argument("--epochs", type=int, default=None, help="shorthand for --set epochs=N")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write metrics.json, config.json and checkpoint.pt here",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the metrics as one JSON object on the last line of stdout",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    add_config_args(p, TrainConfig)
    add_data_args(p)
    p.set_defaults(func=cmd_train)


class VersionAction(argparse.Action):
    """`--version`: asks git only when given (argparse's own takes the text up front)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from orchestrator.provenance import describe_version

        print(describe_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="recsweep: hyperparameter sweeps of recommender models on Ray Tune.",
        epilog="exit codes: 0 done; 1 part failed (a study with no tested model, a failed "
        "export) or a bug; 2 bad input; 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (the table of "
        "what finished is written)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error (or set RECSWEEP_DEBUG=1)",
    )
    parser.add_argument(
        "--version", action=VersionAction, help="the version and git commit of recsweep, and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_data_parser(commands)
    add_models_parser(commands)
    add_train_parser(commands)
    add_sweep_parser(commands)
    add_export_parsers(commands)
    add_report_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 it did all it was asked; 1 it ran but part failed (a
    study with no finished trial, a failed export) or an unexpected error; 2 bad input (a
    file, flag or key: one line names it); 128 + the signal when a signal stopped it: 130
    Ctrl-C, 143 SIGTERM, 129 SIGHUP."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("RECSWEEP_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        signum = int(getattr(e, "signum", signal.SIGINT))
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except Exception as e:
        if debug:
            raise
        if not is_bad_input(e):
            print(
                f"error: unexpected {type(e).__name__}: {one_line(e)}\n(a bug: run again "
                "with --debug, or RECSWEEP_DEBUG=1, for the traceback)",
                file=sys.stderr,
            )
            return 1
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def is_bad_input(e: BaseException) -> bool:
    """Errors that bad input raises (a file, a flag, a key, a model file), as opposed to bugs:
    the CLI answers them with one line and exit code 2."""
    import yaml

    return isinstance(e, (ValueError, TypeError, KeyError, OSError, yaml.YAMLError)) or type(
        e
    ).__module__.startswith(("onnxruntime", "onnx"))  # a broken model file


def one_line(e: BaseException) -> str:
    """The message of an error on one line (a KeyError's is its key, not its repr)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split()) or type(e).__name__
