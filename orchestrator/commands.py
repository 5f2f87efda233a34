"""The commands that look at data and models and at what a run left (`data describe`,
`models`, `export`, `recommend`, `report`), and the flags and output that every command
shares (`add_data_args`, `json_result`). `cli` builds the parser from them.

Heavy imports (torch, ray) happen inside the commands so `--help` stays instant and the
ONNX `recommend` path never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from orchestrator.config import (
    DataConfig,
    add_config_args,
    field_help,
    flag_values,
    from_dict,
)


def add_data_args(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The data flags, the same on `sweep`, `train` and `data describe`: one per
    `DataConfig` field, its seed as `--data-seed` (`--seed` is the sweep's and training's);
    `--folds` on `sweep` only."""
    add_config_args(parser, DataConfig, skip=("seed",) if sweep else ("seed", "folds"))
    parser.add_argument(
        "--data-seed",
        dest="data_seed",
        default=None,
        metavar="SEED",
        help=f"data config seed: {field_help(DataConfig, 'seed')}",
    )


def data_flags(args: argparse.Namespace) -> dict[str, object]:
    """The data flags that were given, as a YAML-shaped dict (`add_data_args`)."""
    return flag_values(DataConfig, argparse.Namespace(**{**vars(args), "seed": args.data_seed}))


def cmd_data_describe(args: argparse.Namespace) -> int:
    from orchestrator.data import describe, load_dataset

    data = load_dataset(from_dict(DataConfig, data_flags(args), where="--"))
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


JSON_HELP = (
    "print one JSON object as the last line of stdout (what was written); the "
    "progress lines go to stderr"
)


def json_result(args: argparse.Namespace, run: Callable[[], tuple[int, dict]]) -> int:
    """Run a command; with `--json` its human lines go to stderr and one JSON object (what
    it did) is the last line of stdout. Returns the command's exit code."""
    if not getattr(args, "json", False):
        return run()[0]
    with contextlib.redirect_stdout(sys.stderr):
        code, result = run()
    print(json.dumps({**result, "exit_code": code}, default=str), flush=True)
    return code


def model_cards() -> list[dict[str, Any]]:
    """Every registered model: its tasks, and per task its defaults, search space and
    recipes with their sources."""
    import dataclasses
    import functools

    from orchestrator.models.base import CommonParams
    from orchestrator.models.registry import get_model_class, list_models, make_params
    from orchestrator.space import describe_space

    shared = {f.name for f in dataclasses.fields(CommonParams)}
    cards = []
    for name in list_models():
        cls = get_model_class(name)

        def defaults(task: str, name: str = name, learned: bool = cls.learned) -> dict[str, Any]:
            """The model's defaults; a baseline's without the training loop's settings."""
            values = dataclasses.asdict(make_params(name, task))
            return {k: v for k, v in values.items() if learned or k not in shared}

        cards.append(
            {
                "name": name,
                "tasks": list(cls.tasks),
                "learned": cls.learned,
                "doc": " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()),
                "defaults": {t: defaults(t) for t in cls.tasks},
                "search_space": {
                    t: describe_space(functools.partial(cls.search_space, task=t))
                    for t in cls.tasks
                },
                "recipes": [dataclasses.asdict(r) for r in cls.recipes],
            }
        )
    return cards


def distribution_text(spec: dict[str, Any]) -> str:
    if "choices" in spec:
        return "{" + ", ".join(str(c) for c in spec["choices"]) + "}"
    text = f"{spec['type']} in [{spec['low']:g}, {spec['high']:g}]"
    return (
        text + (" log" if spec["log"] else "") + (f" step {spec['step']}" if "step" in spec else "")
    )


def cmd_models(args: argparse.Namespace) -> int:
    cards = model_cards()
    if args.json:
        print(json.dumps({"models": cards}))
        return 0
    for card in cards:
        kind = "" if card["learned"] else "; a baseline, not trained"
        print(f"{card['name']} ({', '.join(card['tasks'])}{kind}): {card['doc']}")
        for task in card["tasks"]:
            values = " ".join(f"{k}={v}" for k, v in card["defaults"][task].items())
            print(f"  {task} defaults: {values}")
            space = card["search_space"][task]
            if space:
                print(
                    f"  {task} search space: "
                    + "; ".join(f"{k} {distribution_text(v)}" for k, v in space.items())
                )
        for r in card["recipes"]:
            values = " ".join(f"{k}={v}" for k, v in r["hparams"].items())
            print(f"  recipe {r['name']} ({r['task']}, {r['epochs']} epochs): {values}")
            print(f"    source: {r['source']}")
            print(f"    tuned on: {r['tuned_on']}")
            if r["note"]:
                print(f"    adapted: {r['note']}")
        print()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.publish import export_run

    def run() -> tuple[int, dict]:
        statuses = export_run(args.run_dir, args.study, k=args.k)
        for study, status in statuses.items():
            print(f"{study}: {status}")
        failed = [s for s, v in statuses.items() if v != "ok"]
        if failed:
            print(
                f"error: export failed for {', '.join(failed)} (see above); no valid file "
                "was overwritten",
                file=sys.stderr,
            )
        else:
            print(f"wrote {args.run_dir}/models/<study>.onnx, .topk.onnx, .json, .npz")
        return (1 if failed else 0), {"run_dir": str(args.run_dir), "exports": statuses}

    return json_result(args, run)


def cmd_recommend(args: argparse.Namespace) -> int:
    from orchestrator import serve  # onnxruntime + numpy only: this path never imports torch

    result = serve.recommend(args.model, args.user, args.k)
    print(json.dumps(result) if args.json else serve.render(result))
    return 0


def add_export_parsers(commands: argparse._SubParsersAction) -> None:
    e = commands.add_parser(
        "export",
        help="export a sweep's best models to ONNX, verified",
        description="Export each study's best checkpoint to "
        "RUN_DIR/models/<study>.onnx (+ .topk.onnx, .json, .npz), checked "
        "against PyTorch with onnxruntime; the table gets an export column.",
    )
    e.add_argument("run_dir", help="the sweep's run directory")
    e.add_argument("--study", default=None, help="export only this study")
    e.add_argument("-k", type=int, default=10, help="K of the top-K parity check")
    e.add_argument("--json", action="store_true", help=JSON_HELP)
    e.set_defaults(func=cmd_export)

    r = commands.add_parser(
        "recommend", help="top-K items for a user from an exported model (onnxruntime only)"
    )
    r.add_argument(
        "model",
        metavar="MODEL.onnx",
        help="an exported model (its .json sidecar and .npz must be beside it)",
    )
    r.add_argument(
        "--user",
        required=True,
        metavar="RAW_ID",
        help="the user's id as in the dataset; unknown users get popular items",
    )
    r.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_recommend)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import write_report

    def run() -> tuple[int, dict]:
        path = write_report(args.run_dir, progress=not args.quiet)
        if path is None:  # the viz extra is missing; write_report said what to install
            return 2, {"run_dir": str(args.run_dir), "report": None}
        print(f"wrote {path} (figures in {path.parent / 'figures'})")
        return 0, {
            "run_dir": str(args.run_dir),
            "report": str(path),
            "figures": str(path.parent / "figures"),
        }

    return json_result(args, run)


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "report",
        help="write a sweep's report.html: results, search "
        "plots, UMAP of item embeddings (needs the viz extra)",
        description="Write RUN_DIR/report.html (one self-contained file) "
        "and the figures as PNG in RUN_DIR/figures/.",
    )
    p.add_argument("run_dir", help="the sweep's run directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_report)


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    data_p = commands.add_parser("data", help="look at a dataset")
    data_cmds = data_p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    describe_p = data_cmds.add_parser(
        "describe", help="users, items, interactions, split sizes, filter counts"
    )
    add_data_args(describe_p)
    describe_p.add_argument("--seed", dest="data_seed", help="the same as --data-seed")
    describe_p.add_argument("--json", action="store_true", help="print one JSON object")
    describe_p.set_defaults(func=cmd_data_describe)


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    models_p = commands.add_parser(
        "models",
        help="every model: tasks, defaults, search space, published recipes with their sources",
    )
    models_p.add_argument("--json", action="store_true", help="print one JSON object")
    models_p.set_defaults(func=cmd_models)
