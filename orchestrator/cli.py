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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
