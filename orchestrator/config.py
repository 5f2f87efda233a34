"""Configuration: frozen dataclasses, one help line per field, unknown keys are errors.

The same field metadata generates the command line: `add_config_args` makes a `--flag` of
every scalar or list field (its help line is the field's), `flag_values` reads them back,
and `dotted` turns `--set train.ks=[5,10]` into the nested keys of a sweep file, so a field
documented here is documented everywhere. `from_dict` builds a config from YAML-shaped
dicts and names the offending key (with its path) when one is misspelt or of the wrong type.
A sweep's loading and checking (`load_config`, `check_config`) live in `plan.py`: they need
the model registry, and this module stays light for the torch-free `recommend` path.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
TIES = ("expected", "pessimistic", "optimistic")
"""The tie rules of the ranking metrics (`engine/ties.py`)."""


def opt(default: Any, help: str, sweep_only: bool = False, choices: tuple[str, ...] = ()) -> Any:
    """A config field with its one-line help; `sweep_only`: a training field that means
    something only in a sweep's trials (the `train` command does not offer it); `choices`:
    the only values it takes."""
    metadata = {"help": help, "sweep_only": sweep_only, "choices": choices}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = opt(
        "default",
        "dataset spec: ml-100k, ml-1m, ml-20m, ml-25m, "
        "ml-latest-small, csv:PATH, parquet:PATH, ncf:PREFIX, synthetic[:k=v,...]; "
        "'default' is ml-100k when it can be had offline, else synthetic",
    )
    split: str = opt(
        "leave-last",
        "split spec: leave-last, random:0.8,0.1,0.1, "
        "temporal:0.7,0.1,0.2, u1..u5, ua, ub (ml-100k), ncf (ncf: datasets)",
    )
    data_dir: str | None = opt(
        None,
        "where datasets are looked up and cached (default $RECSWEEP_DATA or ~/.cache/recsweep)",
    )
    min_rating: float | None = opt(
        None, "keep only ratings >= this as interactions (implicit positives); None keeps all"
    )
    user_core: int = opt(
        0, "k-core: drop users with fewer interactions (repeated to a fixpoint with item_core)"
    )
    item_core: int = opt(0, "k-core: drop items with fewer interactions")
    dedup: str = opt(
        "last",
        "repeated (user, item) pairs: keep 'last' or 'first' in time, 'mean' rating, or 'error'",
    )
    seed: int = opt(0, "seed of the split and of the sampled-protocol negatives")
    eval_negatives: int = opt(
        99, "negatives per val/test row for the sampled protocol (99: 100 candidates, as NCF)"
    )
    rating_range: tuple[float, ...] | None = opt(
        None,
        "the rating scale lo,hi (e.g. 0.5,5): a rating outside it is an error, predictions "
        "are clipped to it; default none declared (inf, nan and ratings beyond 1e6 always are)",
    )
    folds: tuple[str, ...] | int = opt(
        (),
        "in a sweep, folds to test on: K (a seeded K-fold) or splits with disjoint test sets "
        "(u1,u2,u3,u4,u5); the search runs on the first fold, then the chosen configurations "
        "and the baselines are tested on every fold (mean ± std); default none",
    )


@dataclass(frozen=True)
class TrainConfig:
    seed: int = opt(0, "seed of initialisation, batch order and negative sampling")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    patience: int = opt(
        -1,
        "epochs without validation improvement before stopping; 0 never "
        "stops early; -1: a tenth of the model's epochs, at least 3",
    )
    ks: tuple[int, ...] = opt((10, 20), "cut-offs K of the ranking metrics")
    protocol: str = opt(
        "full",
        "ranking protocol: full (all items, train items masked) or "
        "sampled (target among eval_negatives fixed negatives)",
        choices=("full", "sampled"),
    )
    ties: str = opt(
        "expected",
        "how a target tied with other candidates counts: expected (each metric's "
        "expected value under random tie-breaking), pessimistic or optimistic",
        choices=TIES,
    )
    eval_batch_users: int = opt(1024, "users scored per full-ranking batch")
    amp: bool = opt(True, "bf16 autocast on CUDA")
    checkpoint_every_s: float = opt(
        10.0,
        "in a sweep, seconds between a trial's checkpoints: "
        "an epoch younger than that since the last reports without "
        "one (the last epoch always has one); 0: every epoch",
        sweep_only=True,
    )
    report_every_s: float = opt(
        1.0,
        "in a sweep, seconds between a trial's reports to Tune "
        "for epochs that neither improve the validation metric nor "
        "checkpoint (those always report); 0: every epoch",
        sweep_only=True,
    )
    refit: bool = opt(
        True,
        "test a retrain on train + val, from the same seed, for the epochs "
        "validation picked (as Dacrema et al. and Rendle et al. test); "
        "validation metrics stay those of the first fit; false: test the first fit",
    )
    metric: str = opt(
        "",
        "validation metric for early stopping and the best state; default "
        "per task: val/rmse (rating), val/ndcg@10 (ranking, sequential)",
    )


def field_help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def from_dict(
    cls: type[T], values: dict[str, Any] | None, where: str = "", *, complete: bool = False
) -> T:
    """Build `cls` from a dict; unknown keys and wrong types raise, naming the key path.
    With `complete`, so do missing keys (a resolved config written whole, read back)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown key(s) {[where + k for k in unknown]}; allowed: {', '.join(fields)}"
        )
    missing = [where + k for k in fields if k not in values]
    if complete and missing:
        raise ValueError(f"missing key(s) {missing}")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out[key] = from_dict(kind, value, f"{where}{key}.", complete=complete)
            continue
        out[key] = _check_type(f"{where}{key}", value, kind)
        choices = fields[key].metadata.get("choices")
        if choices and out[key] not in choices:
            raise ValueError(f"{where}{key}: {value!r}; expected one of {', '.join(choices)}")
    return cls(**out)


def _check_type(key: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if value is None and type(None) in args:
        return None
    if len(args) > 1 and origin is not tuple and type(None) not in args:  # X | Y
        for alternative in args:
            try:
                return _check_type(key, value, alternative)
            except ValueError:
                pass
        names = " or ".join("a list" if typing.get_origin(a) is tuple else a.__name__ for a in args)
        raise ValueError(f"{key}: expected {names}, got {value!r}")
    if args and origin is not tuple and type(None) in args:  # Optional[X]
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return tuple(_check_type(key, v, args[0]) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        origin is None
        and isinstance(kind, type)
        and not isinstance(value, kind)
        or (kind is int and isinstance(value, bool))
    ):
        hint = ""
        if kind in (int, float) and isinstance(value, str) and _is_number(value):
            hint = " (YAML reads a number like 1e-4 as text: write 1.0e-4)"
        raise ValueError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}{hint}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SweepConfig:
    name: str = opt("", "run name; the run directory is <storage>/<name> (default: sweep-<time>)")
    models: tuple[str, ...] = opt(
        ("mf", "autorec", "mf:ranking", "neumf", "caser"),
        "models to search, one study each: model or model:task",
    )
    baselines: tuple[str, ...] = opt(
        ("bias", "pop", "itemknn", "ease", "rp3beta", "puresvd", "ials"),
        "baselines (model or model:task), each in the table of its task's "
        "evaluation and searched like a model (trials per study, its table's "
        "metric; pop, with nothing to search, fitted once); one with no study "
        "in that table is not run",
    )
    trials: int = opt(8, "trials per study; the first is the model's defaults")
    startup_trials: int = opt(
        0,
        "TPE's random start-up trials per study; 0: min(10, max(2, "
        "trials // 4)), written to sweep.yaml",
    )
    epochs: int = opt(
        0,
        "maximum epochs per trial (ASHA's max_t); 0: each model's default "
        "epochs (e.g. AutoRec's full-batch steps need far more than MF's)",
    )
    grace_period: int = opt(
        0,
        "epochs every trial runs before ASHA may stop it; 0: a quarter "
        "of the study's max epochs (at least 1)",
    )
    reduction_factor: int = opt(2, "ASHA's reduction factor: a rung keeps the best 1/N")
    schedule: dict = opt(
        {},
        "per study, its resolved {max_epochs, grace_period, rungs} "
        "(the sweep writes it to sweep.yaml; an entry given here is used as is)",
    )
    metric: str = opt(
        "",
        "validation metric to optimise (and early-stop on); default per "
        "task: val/rmse (rating), val/ndcg@10 (ranking, sequential)",
    )
    time_budget: str = opt(
        "10m",
        "hard wall-clock budget for the whole sweep, shared by the "
        "studies, e.g. 8h, 30m, 90s; 'none' for no limit",
    )
    cpus_per_trial: float = opt(1.0, "CPUs reserved per trial")
    gpus_per_trial: float = opt(
        -1.0,
        "GPU fraction per trial (several trials share a GPU); "
        "-1: 0.25 when the cluster has GPUs, else 0",
    )
    address: str = opt("", "Ray cluster address (auto, HOST:PORT); empty starts a local one")
    autoscaler_config: str = opt(
        "",
        "the cluster's autoscaler config (`ray up` YAML): its "
        "node types count towards trial concurrency (default with "
        "address: ~/ray_bootstrap_config.yaml if present)",
    )
    storage: str = opt(
        "runs",
        "where run directories go: a local path, a shared path or a "
        "cloud URI (s3://, gs://) for multi-node runs",
    )
    final_seeds: int = opt(
        0, "retrain each study's best configuration with N seeds (table shows mean +- std)"
    )
    max_failures: int = opt(3, "restarts of a failed trial from its last checkpoint")
    export: bool = opt(True, "export each study's chosen model to ONNX in models/ (false: skip)")
    report: bool = opt(True, "write report.html, the search's figures (false: skip)")
    wandb: str = opt("offline", "Weights & Biases: offline (default), online, disabled")
    wandb_project: str = opt("recsweep", "W&B project")
    seed: int = opt(0, "seed of the TPE samplers and the trials")
    sampler: dict = opt(
        {},
        "the search's sampler: {name: tpe} (default) or {name: random}, and "
        "TPE's settings (n_ei_candidates, multivariate, group, constant_liar); "
        "sweep.yaml records every setting, seeded",
    )
    search_space: dict = opt(
        {},
        "per-model overrides, {model: {param: {distribution, min, max}"
        " | {values: [...]} | {value: x}}} (W&B sweep syntax accepted)",
    )
    data: DataConfig = opt(DataConfig(), "the dataset")
    train: TrainConfig = opt(TrainConfig(), "the training loop")


def parse_duration(text: str) -> float | None:
    """'8h', '30m', '90s', '1h30m', or plain seconds -> seconds; '' or 'none' -> None."""
    import re

    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"time_budget={text!r}: expected a duration like 8h, 30m, 90s or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-ready dict (tuples as lists) of a config."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


# --- the command line, from the same fields ----------------------------------------------


def flag_fields(cls: type, skip: Sequence[str] = ()) -> list[dataclasses.Field]:
    """The fields of a config that take a `--flag`: scalars and lists, not nested configs
    or mappings (those take a dotted `--set`), nor `sweep_only` fields or those in `skip`."""
    return [
        f
        for f in dataclasses.fields(cls)
        if f.name not in skip
        and not f.metadata.get("sweep_only")
        and not dataclasses.is_dataclass(f.default)
        and not isinstance(f.default, dict)
        and not (
            f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory(), dict)
        )
    ]


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One `--flag` per field of `flag_fields`, its help from the field's metadata."""
    for f in flag_fields(cls, skip):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag, dest=f.name, default=None, metavar=f.name.upper(), help=f.metadata.get("help", "")
        )


def flag_value(raw: str, kind: str) -> object:
    """A flag's text as YAML reads it; a list field also takes `a,b,c`; a text field
    keeps the text as typed (`--name 2024` is a name, not a number)."""
    import yaml

    if kind.endswith("| int") and raw.strip().isdigit():  # a count where a list may be
        return int(raw)
    if kind.startswith("tuple") and not raw.lstrip().startswith("["):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        return items if kind.startswith("tuple[str") else [yaml.safe_load(i) for i in items]
    value = yaml.safe_load(raw)
    return raw if kind in ("str", "str | None") and value is not None else value


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, object]:
    """The config fields given as flags, as a YAML-shaped dict."""
    return {
        f.name: flag_value(getattr(args, f.name), str(f.type))
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config with the flags that were given."""
    return from_dict(cls, flag_values(cls, args), where="--")


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """`--set key=value` pairs -> {key: value} (the values as typed)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=0.01")
        out[key.strip()] = value.strip()
    return out


def dotted(sets: dict[str, str]) -> dict[str, object]:
    """`{"train.ks": "[5, 10]"}` -> `{"train": {"ks": [5, 10]}}`, the values read as YAML."""
    import yaml

    out: dict[str, object] = {}
    for key, raw in sets.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})  # type: ignore[assignment]
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is set to a value and a mapping")
        node[last] = yaml.safe_load(raw)
    return out
