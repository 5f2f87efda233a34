"""`python -m orchestrator <command>`: the command line.

Each command is a small function that parses its flags, calls the library, and prints.
Heavy imports (torch, ray) happen inside the commands so `--help` stays instant and the
ONNX `recommend` path never imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from orchestrator.config import DataConfig, from_dict


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per config field, its help taken from the field's metadata."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                            help=f.metadata.get("help", ""))


def config_from_args(cls: type, args: argparse.Namespace) -> object:
    """The config with the flags that were given; strings are parsed as YAML scalars."""
    import yaml

    given = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        given[f.name] = str(raw) if f.type in ("str", "str | None") and value is not None \
            else value
    return from_dict(cls, given, where="--")


def cmd_data_describe(args: argparse.Namespace) -> int:
    from data import describe, load_dataset

    cfg = config_from_args(DataConfig, args)
    data = load_dataset(cfg)
    info = describe(data)
    if args.json:
        print(json.dumps(info))
    else:
        print(describe_text(info))
    return 0


def describe_text(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


SWEEP_FLAGS = ("models", "trials", "epochs", "time_budget", "gpus_per_trial", "cpus_per_trial",
               "address", "storage", "name", "final_seeds", "wandb")


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.sweep import load_config, run_sweep

    overrides = {k: getattr(args, k) for k in SWEEP_FLAGS if getattr(args, k) is not None}
    if "models" in overrides:
        overrides["models"] = [m for m in overrides["models"].split(",") if m]
    data = {k: getattr(args, k) for k in ("dataset", "split") if getattr(args, k) is not None}
    if data:
        overrides["data"] = data
    if args.resume:
        if args.config or overrides or args.smoke:
            raise ValueError("--resume RUN_DIR continues a sweep as it was configured; "
                             "give no other settings with it")
        run_sweep(None, resume=args.resume)  # type: ignore[arg-type]
        return 0
    run_sweep(load_config(args.config, overrides, smoke=args.smoke))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from orchestrator import results

    frame = results.load_trials(args.run_dir) if args.trials else results.load(args.run_dir)
    print(results.render(frame, args.format), end="")
    return 0


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    from orchestrator.config import SweepConfig, help_of

    p = commands.add_parser("sweep", help="hyperparameter search over the models on Ray Tune")
    p.add_argument("--config", help="sweep YAML file (CLI flags override it)")
    types = {"trials": int, "epochs": int, "final_seeds": int, "gpus_per_trial": float,
             "cpus_per_trial": float}
    for key in SWEEP_FLAGS:
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=types.get(key, str),
                       default=None, help=help_of(SweepConfig, key))
    p.add_argument("--dataset", help=help_of(DataConfig, "dataset"))
    p.add_argument("--split", help=help_of(DataConfig, "split"))
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep")
    p.add_argument("--smoke", action="store_true",
                   help="the whole pipeline in seconds: 2 trials, 2 epochs, small synthetic data")
    p.set_defaults(func=cmd_sweep)

    r = commands.add_parser("results", help="print a sweep's results table again")
    r.add_argument("run_dir", help="the sweep's run directory")
    r.add_argument("--format", default="md", choices=("md", "csv", "json"))
    r.add_argument("--trials", action="store_true", help="every trial of every study instead")
    r.set_defaults(func=cmd_results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="recsweep: hyperparameter sweeps of recommender models on Ray Tune.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data_p = commands.add_parser("data", help="look at a dataset")
    data_cmds = data_p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    describe_p = data_cmds.add_parser("describe", help="users, items, interactions, split sizes, "
                                      "filter counts")
    add_config_args(describe_p, DataConfig)
    describe_p.add_argument("--json", action="store_true", help="print one JSON object")
    describe_p.set_defaults(func=cmd_data_describe)
    add_sweep_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
