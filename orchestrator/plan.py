"""A sweep's plan before Ray: the config read and checked, resolved, and where it runs.

`load_config` (YAML + flags) -> `check_config` (everything that can fail before Ray starts:
models, baselines (`sweep_studies`: the studies searched, baselines included), recipes,
search-space types and ranges, the sampler, resources, W&B) ->
`resolved` (the sampler's settings, TPE's start-up trials and each study's ASHA `Schedule`:
epochs enough for its recipes, written to `sweep.yaml`); `study_points` gives a study's
first trials (defaults, then recipes); `run_directory` and
`experiment_root` say where the run's files and Tune's experiments go; `load_run_config`
reads a run's `sweep.yaml` back whole for `--resume` (`rundir.read_config`). No Ray here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import netrc
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow.fs
import yaml

from orchestrator.config import DataConfig, SweepConfig, from_dict, parse_duration
from orchestrator.data.splits import fold_splits
from orchestrator.engine.evaluation import monitored_metric
from orchestrator.models.base import MAX_EPOCHS
from orchestrator.models.registry import get_model_class, list_models, make_params, param_types
from orchestrator.records import Schedule, Study
from orchestrator.rundir import check_run_name, read_config
from orchestrator.space import describe_space, start_points, validate_space

SMOKE = {
    "trials": 2,
    "epochs": 2,
    "final_seeds": 0,
    "data": {"dataset": "synthetic:users=300,items=400,interactions=8000,seed=0"},
}
SEARCH = "search"  # the Tune experiment of all studies, in the run directory
MAX_TRIALS = 10_000  # per study: beyond, a sweep would never finish
# the experiment re-running the chosen configurations with more seeds and on every fold
FINAL = "final"


def parse_study(entry: str, cfg_metric: str, ks: tuple[int, ...], what: str = "models") -> Study:
    """`mf`, `mf:ranking` -> a Study (of a baseline when `what` is "baselines"); errors name
    the entry and what it may be."""
    model, _, task = entry.partition(":")
    if model not in list_models():
        raise ValueError(f"{what}: unknown model {model!r}; known: {', '.join(list_models())}")
    cls = get_model_class(model)
    task = task or cls.tasks[0]
    if task not in cls.tasks:
        raise ValueError(
            f"{what}: {entry!r}: model {model!r} supports {', '.join(cls.tasks)}, not {task!r}"
        )
    try:
        metric, mode = monitored_metric(task, cfg_metric, ks)
    except ValueError as e:
        raise ValueError(f"metric: {e} ({what} entry {entry!r})") from None
    return Study(entry.replace(":", "-"), model, task, metric, mode, what == "baselines")


def model_studies(cfg: SweepConfig) -> list[Study]:
    """`models: [mf, mf:ranking, neumf]` -> studies; errors name the bad entry."""
    out = [parse_study(entry, cfg.metric, cfg.train.ks) for entry in cfg.models]
    for study in out:
        if not get_model_class(study.model).learned:
            raise ValueError(
                f"models: {study.model!r} is a baseline (fitted, not trained); list it in "
                "`baselines`, where it is searched and tested beside the models"
            )
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"models: {list(cfg.models)} names a study twice")
    return out


def sweep_studies(cfg: SweepConfig) -> tuple[list[Study], list[Study], list[str]]:
    """What a sweep runs: the studies it searches (each model's, then each baseline's that
    has hyperparameters: a baseline is searched as hard as a model), the baselines fitted
    once (nothing to search: `pop`), and a line for each baseline not run (its table holds
    no model study). A baseline optimises its table's validation metric."""
    studies = model_studies(cfg)
    table_metric = {s.table: (s.metric, s.mode) for s in studies}
    fixed: list[Study] = []
    skipped: list[str] = []
    for entry in cfg.baselines:
        study = parse_study(entry, "", cfg.train.ks, what="baselines")
        if get_model_class(study.model).learned:
            raise ValueError(
                f"baselines: {entry!r} is a learned model; search it in `models` instead"
            )
        if study.table not in table_metric:
            skipped.append(f"baselines: {entry} not run: no {study.table} study in this sweep")
            continue
        metric, mode = table_metric[study.table]
        study = dataclasses.replace(study, metric=metric, mode=mode)
        (studies if has_space(study) else fixed).append(study)
    names = [s.name for s in studies + fixed]
    if len(set(names)) != len(names):
        raise ValueError(f"models and baselines: {names} name a study twice")
    return studies, fixed, skipped


def has_space(study: Study) -> bool:
    """Whether the study's model has hyperparameters to search for its task."""
    space = get_model_class(study.model).search_space
    return bool(describe_space(functools.partial(space, task=study.task)))


def load_config(
    path: str | Path | None, overrides: dict[str, Any], smoke: bool = False
) -> SweepConfig:
    """The sweep file (if any), then `--smoke` defaults, then CLI flags; unknown keys raise."""
    values: dict[str, Any] = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of sweep settings at the top level")
    for layer in ([SMOKE] if smoke else []) + [overrides]:
        values = merged(values, layer)
    where = f"{path}: " if path else ""
    try:
        cfg = from_dict(SweepConfig, values)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    check_config(cfg, where)
    return cfg


def merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`base` with `layer` on top; mappings merge key by key at every depth."""
    out = dict(base)
    for key, value in layer.items():
        out[key] = (
            merged(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def check_config(cfg: SweepConfig, where: str = "") -> list[Study]:
    """Everything that can be checked before Ray starts; returns the studies."""
    try:
        if cfg.name:
            check_run_name(cfg.name)
        studies = sweep_studies(cfg)[0]
        parse_duration(cfg.time_budget)
        for study in studies:  # a recipe must lie in its model's own space
            outside = study_points(study, {})[1]["outside"]
            if outside:
                raise ValueError(
                    f"model {study.model!r}, {outside[0]} (a bug in the model's recipes)"
                )
        validate_space(
            cfg.search_space,
            {s.model: param_types(s.model) for s in studies},
            lambda model, name, value: make_params(model, **{name: value}),
        )
        if cfg.trials < 1 or cfg.epochs < 0 or cfg.grace_period < 0 or cfg.startup_trials < 0:
            raise ValueError("trials must be >= 1; epochs, grace_period and startup_trials >= 0")
        if cfg.trials > MAX_TRIALS or cfg.epochs > MAX_EPOCHS:
            raise ValueError(
                f"trials={cfg.trials}, epochs={cfg.epochs}: at most {MAX_TRIALS:,} trials per "
                f"study and {MAX_EPOCHS:,} epochs (beyond, a sweep would never finish)"
            )
        if not cfg.cpus_per_trial > 0:
            raise ValueError(
                f"cpus_per_trial={cfg.cpus_per_trial}: expected a number > 0 (a "
                "trial needs a CPU to run on)"
            )
        if not (cfg.gpus_per_trial == -1 or 0 <= cfg.gpus_per_trial):
            raise ValueError(
                f"gpus_per_trial={cfg.gpus_per_trial}: expected -1 (auto), 0, a "
                "fraction to share a GPU, or a whole number of GPUs"
            )
        sampler_settings(cfg)
        if cfg.reduction_factor < 2:
            raise ValueError(f"reduction_factor={cfg.reduction_factor}: expected an int >= 2")
        schedules(cfg, studies)
        folds = fold_splits(cfg.data.folds)
        if folds and cfg.data.split not in (DataConfig().split, folds[0]):
            raise ValueError(
                f"data.split={cfg.data.split!r} with data.folds: the search runs on the first "
                f"fold ({folds[0]!r}); leave split out, or list it first in folds"
            )
        if cfg.wandb not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb: {cfg.wandb!r}; expected offline, online or disabled")
        if cfg.wandb == "online" and not has_wandb_key():
            raise ValueError(
                "wandb: online needs a W&B API key where W&B looks for it on "
                "this node: run `wandb login` here (it writes ~/.netrc), or set "
                "WANDB_API_KEY in the environment Ray is started from"
            )
    except (ValueError, KeyError) as e:
        raise ValueError(f"{where}{e.args[0] if isinstance(e, KeyError) else e}") from None
    return studies


# TPE's settings, written out (Optuna 5 changed its defaults: multivariate and the constant
# liar are now on); a sweep file's `sampler` entries override them
TPE = {"n_ei_candidates": 24, "multivariate": True, "group": False, "constant_liar": True}
SAMPLERS = {"tpe": {"name", "seed", "n_startup_trials", *TPE}, "random": {"name", "seed"}}


def sampler_settings(cfg: SweepConfig) -> dict[str, Any]:
    """The sampler of every study, all its settings explicit and seeded (sweep.yaml's
    `sampler`); raises naming a bad key."""
    given = dict(cfg.sampler)
    name = given.get("name", "tpe")
    if name not in SAMPLERS:
        raise ValueError(f"sampler.name: {name!r}; expected tpe or random")
    unknown = sorted(set(given) - SAMPLERS[name])
    if unknown:
        raise ValueError(
            f"sampler: unknown key(s) {unknown} for {name}; allowed: "
            f"{', '.join(sorted(SAMPLERS[name]))}"
        )
    base = {"name": name, "seed": cfg.seed}
    if name == "tpe":
        base.update(n_startup_trials=startup_trials(cfg), **TPE)
    for key, value in given.items():
        if key != "name" and type(value) is not type(base[key]):
            raise ValueError(f"sampler.{key}: {value!r}; expected {type(base[key]).__name__}")
    return {**base, **given}


def startup_trials(cfg: SweepConfig) -> int:
    """TPE's random start-up trials per study: the budget's quarter, between 2 and 10
    (Optuna's default of 10 would make a sweep of 8 trials a random search)."""
    return cfg.startup_trials or min(10, max(2, cfg.trials // 4))


def study_points(
    study: Study, overrides: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, list[str]]]:
    """A study's first trials with their origins (the model's defaults, then the recipes of
    its task that the space with `overrides` holds), and why each other recipe is left out
    (`space.start_points`)."""
    cls = get_model_class(study.model)
    defaults = dataclasses.asdict(make_params(study.model, study.task))
    recipes = [(r.name, r.hparams) for r in cls.recipes if r.task == study.task]
    space = functools.partial(cls.search_space, task=study.task)
    return start_points(space, overrides, defaults, recipes)


def max_epochs(study: Study, cfg: SweepConfig) -> int:
    """The sweep's `epochs`, or when the sweep leaves it at 0 the most of the model's default
    and the epochs of each recipe the study tries (so a recipe trains as published); 1 for
    a model fitted in closed form (a baseline: one report)."""
    if not get_model_class(study.model).learned:
        return 1
    if cfg.epochs:
        return cfg.epochs
    tried = {origin for origin, _ in study_points(study, cfg.search_space.get(study.model, {}))[0]}
    recipes = [
        r.epochs for r in get_model_class(study.model).recipes if f"recipe:{r.name}" in tried
    ]
    return max([make_params(study.model, study.task).epochs, *recipes])


def schedules(cfg: SweepConfig, studies: list[Study]) -> dict[str, Schedule]:
    """Each study's epoch budget and ASHA rungs: `cfg.schedule`'s entry, else automatic."""
    out = {}
    for study in studies:
        auto = Schedule.auto(max_epochs(study, cfg), cfg.grace_period, cfg.reduction_factor)
        given = cfg.schedule.get(study.name)
        if given is None:
            out[study.name] = auto
            continue
        where = f"schedule.{study.name}"
        if not isinstance(given, dict) or set(given) != {"max_epochs", "grace_period", "rungs"}:
            raise ValueError(
                f"{where}: expected {{max_epochs, grace_period, rungs}}, got {given!r}"
            )
        if given["max_epochs"] != auto.max_epochs:
            raise ValueError(
                f"{where}.max_epochs={given['max_epochs']!r}, but epochs gives "
                f"{auto.max_epochs}: remove the entry or change it"
            )
        rungs = given["rungs"]
        if not (
            isinstance(given["grace_period"], int)
            and isinstance(rungs, list)
            and rungs
            and all(isinstance(r, int) and 1 <= r <= auto.max_epochs for r in rungs)
        ):
            raise ValueError(
                f"{where}: expected an int grace_period and a list of rung "
                f"epochs in [1, {auto.max_epochs}], got {given!r}"
            )
        out[study.name] = Schedule(auto.max_epochs, given["grace_period"], tuple(rungs))
    unknown = sorted(set(cfg.schedule) - {s.name for s in studies})
    if unknown:
        raise ValueError(
            f"schedule: no study {unknown}; studies: {', '.join(s.name for s in studies)}"
        )
    return out


def resolved(cfg: SweepConfig) -> SweepConfig:
    """The config with the automatic choices written out (what sweep.yaml records)."""
    plan = {
        name: {"max_epochs": s.max_epochs, "grace_period": s.grace_period, "rungs": list(s.rungs)}
        for name, s in schedules(cfg, sweep_studies(cfg)[0]).items()
    }
    folds = fold_splits(cfg.data.folds)
    data = dataclasses.replace(cfg.data, folds=folds, split=folds[0] if folds else cfg.data.split)
    return dataclasses.replace(
        cfg,
        data=data,
        startup_trials=startup_trials(cfg),
        schedule=plan,
        sampler=sampler_settings(cfg),
    )


def has_wandb_key() -> bool:
    """WANDB_API_KEY is set, or `wandb login` saved a key in this user's netrc for the W&B
    host (WANDB_BASE_URL, else api.wandb.ai), where W&B itself will find it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        # no hostname (a URL without a scheme): "" matches no machine, as None did
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host.hostname or "")
        return found is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_directory(cfg: SweepConfig) -> Path:
    local = "://" not in cfg.storage
    return (Path(cfg.storage) if local else Path("runs")).resolve() / cfg.name


def experiment_root(cfg: SweepConfig) -> str:
    """Where Tune writes the studies: the run directory, or `<uri>/<name>` for cloud storage."""
    if "://" in cfg.storage:
        return cfg.storage.rstrip("/") + "/" + cfg.name
    return str(run_directory(cfg))


def check_tune_state(path: str) -> None:
    """Ray Tune resumes an experiment from the newest `experiment_state-<time>.json` in
    `path`; one cut short (the driver killed while Tune wrote it) makes Tune log the error
    and start the experiment over, silently dropping the finished trials. Refuse that."""
    fs, root = pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (None, path)
    fs = fs or pyarrow.fs.LocalFileSystem()
    found = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    names = fnmatch.filter((f.base_name for f in found), "experiment_state-*.json")
    if not names:
        return
    newest = f"{root}/{max(names)}"
    with fs.open_input_stream(newest) as f:
        text = f.readall()
    try:
        json.loads(text)
    except ValueError:
        raise ValueError(
            f"{newest}: Ray Tune's experiment state is cut short ({len(text):,} bytes; the "
            "sweep was killed while Tune wrote it), and Tune would start the search over "
            "rather than resume it; the trials that ran keep their files beside it: start a "
            "new sweep (another --name)"
        ) from None


def load_run_config(run_dir: str | Path) -> SweepConfig:
    """The resolved config of an earlier sweep, for `--resume`."""
    try:
        cfg = read_config(run_dir, complete=True)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--resume {run_dir}: {e}") from None
    # a moved run directory resumes where it now is
    storage = cfg.storage if "://" in cfg.storage else str(Path(run_dir).resolve().parent)
    return dataclasses.replace(cfg, storage=storage, name=Path(run_dir).resolve().name)
