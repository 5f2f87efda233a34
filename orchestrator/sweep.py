"""The sweep: one study per model, Optuna TPE + ASHA per study, resumable, then the table.

    SweepConfig (resolved: TPE start-up, ASHA schedule) -> prepared data (once, on the
    driver) -> one Tune experiment of all studies:
        Tuner(with_resources(with_parameters(run_trial, data)),
              StudySearch (an OptunaSearch(TPE) per study), StudyASHA (an ASHA per study))
    -> TrialRecords -> optional re-runs of the chosen configurations with more seeds
    -> finalize.py (choose on validation, test the chosen only, baselines) -> StudyResults
    -> results.py (a table per evaluation, with paired tests) -> export -> report

The run directory (`<storage>/<name>` when storage is a local path, else `runs/<name>`
beside the remote experiments) holds `sweep.yaml`, `data.json`, the Tune experiment
`search/` (the `--resume` target), `seeds/` (with `final_seeds`), `wandb/`,
`trials.parquet`, `checkpoints/`, and `results.*`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import netrc
import os
import pickle
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import yaml
from optuna.samplers import TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from data import describe, load_dataset
from data.files import write_text
from models.registry import get_model_class, make_params, param_types
from orchestrator import results
from orchestrator.config import SweepConfig, from_dict, parse_duration, to_dict
from orchestrator.export import export_run
from orchestrator.finalize import choose, finalize, study_of
from orchestrator.metrics import lower_is_better
from orchestrator.records import Schedule, Study, TrialRecord
from orchestrator.report import compile_umap_in_background, write_report
from orchestrator.space import default_point, sample_params, validate_space
from orchestrator.tracking import WandbRuns
from orchestrator.train import check_ks
from orchestrator.trainable import run_trial, split_config
from orchestrator.warm import warm_workers

SMOKE = {"trials": 2, "epochs": 2, "final_seeds": 0,
         "data": {"dataset": "synthetic:users=300,items=400,interactions=8000,seed=0"}}
DEFAULT_GPU_FRACTION = 0.25
# Checkpoints kept per trial. Tune deletes the oldest as it registers a new one, before its
# next snapshot of the experiment state: with one kept, a driver killed in between leaves a
# snapshot whose checkpoint is gone, and --resume cannot restore that trial (seen in the
# SIGKILL test). With two, that takes two checkpoints with no snapshot between them.
KEEP_CHECKPOINTS = 2
SEARCH = "search"  # the Tune experiment of all studies, in the run directory
SEEDS = "seeds"  # the experiment re-running the chosen configurations with more seeds


def studies_of(cfg: SweepConfig) -> list[Study]:
    """`models: [mf, mf:ranking, neumf]` -> studies; errors name the bad entry."""
    out = [study_of(entry, cfg.metric, cfg.train.ks) for entry in cfg.models]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"models: {list(cfg.models)} names a study twice")
    return out


def load_config(path: str | Path | None, overrides: dict[str, Any], smoke: bool = False
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
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
    where = f"{path}: " if path else ""
    try:
        cfg = from_dict(SweepConfig, values)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    check_config(cfg, where)
    return cfg


def check_config(cfg: SweepConfig, where: str = "") -> list[Study]:
    """Everything that can be checked before Ray starts; returns the studies."""
    try:
        studies = studies_of(cfg)
        for entry in cfg.baselines:
            study = study_of(entry, "", cfg.train.ks, what="baselines")
            if get_model_class(study.model).learned:
                raise ValueError(f"baselines: {entry!r} is a learned model; search it in "
                                 "`models` instead")
        parse_duration(cfg.time_budget)
        validate_space(cfg.search_space, {s.model: param_types(s.model) for s in studies},
                       lambda model, name, value: make_params(model, **{name: value}))
        if cfg.trials < 1 or cfg.epochs < 0 or cfg.grace_period < 0 or cfg.startup_trials < 0:
            raise ValueError("trials must be >= 1; epochs, grace_period and startup_trials "
                             ">= 0")
        if not cfg.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial={cfg.cpus_per_trial}: expected a number > 0 (a "
                             "trial needs a CPU to run on)")
        if not (cfg.gpus_per_trial == -1 or 0 <= cfg.gpus_per_trial):
            raise ValueError(f"gpus_per_trial={cfg.gpus_per_trial}: expected -1 (auto), 0, a "
                             "fraction to share a GPU, or a whole number of GPUs")
        if cfg.reduction_factor < 2:
            raise ValueError(f"reduction_factor={cfg.reduction_factor}: expected an int >= 2")
        schedules(cfg, studies)
        if cfg.wandb not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb: {cfg.wandb!r}; expected offline, online or disabled")
        if cfg.wandb == "online" and not has_wandb_key():
            raise ValueError("wandb: online needs a W&B API key where W&B looks for it on "
                             "this node: run `wandb login` here (it writes ~/.netrc), or set "
                             "WANDB_API_KEY in the environment Ray is started from")
    except (ValueError, KeyError) as e:
        raise ValueError(f"{where}{e.args[0] if isinstance(e, KeyError) else e}") from None
    return studies


def startup_trials(cfg: SweepConfig) -> int:
    """TPE's random start-up trials per study: the budget's quarter, between 2 and 10
    (Optuna's default of 10 would make a sweep of 8 trials a random search)."""
    return cfg.startup_trials or min(10, max(2, cfg.trials // 4))


def max_epochs(study: Study, cfg: SweepConfig) -> int:
    """The sweep's `epochs`, or the model's own default when the sweep leaves it at 0."""
    return cfg.epochs or make_params(study.model, study.task).epochs


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
            raise ValueError(f"{where}: expected {{max_epochs, grace_period, rungs}}, got "
                             f"{given!r}")
        if given["max_epochs"] != auto.max_epochs:
            raise ValueError(f"{where}.max_epochs={given['max_epochs']!r}, but epochs gives "
                             f"{auto.max_epochs}: remove the entry or change it")
        rungs = given["rungs"]
        if not (isinstance(given["grace_period"], int) and isinstance(rungs, list) and rungs
                and all(isinstance(r, int) and 1 <= r <= auto.max_epochs for r in rungs)):
            raise ValueError(f"{where}: expected an int grace_period and a list of rung "
                             f"epochs in [1, {auto.max_epochs}], got {given!r}")
        out[study.name] = Schedule(auto.max_epochs, given["grace_period"], tuple(rungs))
    unknown = sorted(set(cfg.schedule) - {s.name for s in studies})
    if unknown:
        raise ValueError(f"schedule: no study {unknown}; studies: "
                         f"{', '.join(s.name for s in studies)}")
    return out


def resolved(cfg: SweepConfig) -> SweepConfig:
    """The config with the automatic choices written out (what sweep.yaml records)."""
    plan = {name: {"max_epochs": s.max_epochs, "grace_period": s.grace_period,
                   "rungs": list(s.rungs)} for name, s in schedules(cfg, studies_of(cfg)).items()}
    return dataclasses.replace(cfg, startup_trials=startup_trials(cfg), schedule=plan)


def has_wandb_key() -> bool:
    """WANDB_API_KEY is set, or `wandb login` saved a key in this user's netrc for the W&B
    host (WANDB_BASE_URL, else api.wandb.ai), where W&B itself will find it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host.hostname) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_dir_of(cfg: SweepConfig) -> Path:
    local = "://" not in cfg.storage
    return (Path(cfg.storage) if local else Path("runs")).resolve() / cfg.name


def experiment_root(cfg: SweepConfig) -> str:
    """Where Tune writes the studies: the run directory, or `<uri>/<name>` for cloud storage."""
    if "://" in cfg.storage:
        return cfg.storage.rstrip("/") + "/" + cfg.name
    return str(run_dir_of(cfg))


def connect(cfg: SweepConfig) -> None:
    """Join the cluster at `address` (or start a local one) and fail early if unreachable."""
    warm_start_trials()
    if ray.is_initialized():
        return
    host, _, port = cfg.address.rpartition(":")
    if host and port.isdigit():
        # ray.init retries an unreachable GCS for minutes; a plain TCP probe answers at once
        try:
            socket.create_connection((host.removeprefix("ray://"), int(port)), timeout=5).close()
        except OSError as e:
            raise ValueError(f"address: cannot reach a Ray cluster at {cfg.address!r}: {e}"
                             ) from None
    try:
        if cfg.address or os.environ.get("RAY_ADDRESS"):  # as `ray job submit` sets it
            ray.init(address=cfg.address or None, log_to_driver=False)
        else:
            with warm_workers() as system_config:
                ray.init(log_to_driver=False, include_dashboard=False,
                         _system_config=system_config)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ValueError(f"address: cannot reach a Ray cluster at {cfg.address!r}: {e}") from None


def warm_start_trials() -> None:
    """Let Tune's trial actors start in the idle workers Ray starts with the job (warmed by
    `orchestrator.warm` on a local Ray): Tune gives its actors the runtime env
    `{"env_vars": {"PL_DISABLE_FORK": "1"}}`, for PyTorch Lightning, which no trial uses, and
    Ray starts an actor whose runtime env differs from the job's in a new process, which
    spawns and imports everything after the trial is scheduled. Without the variable the env
    is the job's. (If a later Tune moves it, trials start cold: slower, not wrong.)"""
    with contextlib.suppress(ImportError):
        from ray.tune.execution import class_cache

        getattr(class_cache, "DEFAULT_ENV_VARS", {}).pop("PL_DISABLE_FORK", None)


def quiet_libraries() -> None:
    """Our progress lines say what matters; Tune's and Optuna's chatter drowns them."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune snapshots its state every num_to_keep checkpoints of a trial (what --resume
    # needs) and warns about it each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the config on the head


def autoscaler_node_types(cfg: SweepConfig) -> tuple[dict[str, dict[str, float]], float]:
    """The worker node types the autoscaler may add, and its global `max_workers` bound.

    Read from `cfg.autoscaler_config`, else (joining a cluster) from `~/ray_bootstrap_config.yaml`
    when it exists: Ray 2.60 exposes node types through no public cluster API (the GCS
    `ClusterConfig` stays empty under the open-source autoscaler). Returns
    `({name: {"CPU", "GPU", "max_workers"}}, global max_workers or inf)`, without the head type:
    the head is alive and counted among `ray.nodes()`.
    """
    path = Path(cfg.autoscaler_config or BOOTSTRAP_CONFIG).expanduser()
    if not cfg.autoscaler_config and not (cfg.address and path.exists()):
        return {}, math.inf
    if not path.is_file():
        raise FileNotFoundError(f"autoscaler_config: {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    types = doc.get("available_node_types") if isinstance(doc, dict) else None
    if not isinstance(types, dict) or not types:
        raise ValueError(f"{path}: expected an autoscaler config with a non-empty mapping "
                         "`available_node_types`")
    limit = doc.get("max_workers", math.inf)  # Ray's default per-type max is the global one
    if not isinstance(limit, (int, float)):
        raise ValueError(f"{path}: max_workers: expected a number, got {limit!r}")
    out = {}
    for name, spec in types.items():
        if name == doc.get("head_node_type"):
            continue
        spec = spec if isinstance(spec, dict) else {}
        res, count = spec.get("resources") or {}, spec.get("max_workers", limit)
        if not isinstance(res, dict) or not all(isinstance(v, (int, float))
                                                for v in [*res.values(), count]):
            raise ValueError(f"{path}: available_node_types.{name}: expected `resources` "
                             "mapping to numbers and a numeric `max_workers`")
        if not res and count:
            # `ray up` writes detected resources into the bootstrap copy, not into cluster.yaml
            print(f"cluster: node type {name!r} in {path} states no resources; not counted",
                  flush=True)
        out[name] = {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0)),
                     "max_workers": float(count)}
    return out, float(limit)


def resources(cfg: SweepConfig) -> tuple[dict[str, float], int]:
    """The per-trial request and how many trials the cluster can run at once.

    Counts the alive nodes and the worker nodes the autoscaler may still add (see
    `autoscaler_node_types`): each type up to its `max_workers` minus its alive nodes, all types
    together up to the global `max_workers` minus the alive workers, types holding more trials
    first. An alive worker is taken to be of the first type with its CPU and GPU counts (an
    approximation: Ray does not tell a node's type). Raises if neither an alive node nor an
    addable node type could ever host one trial (a trial cannot span nodes), instead of
    leaving trials pending all night.
    """
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    types, limit = autoscaler_node_types(cfg)
    addable = {k: t for k, t in types.items() if t["max_workers"] > 0 and limit > 0}
    total_gpus = sum(n.get("GPU", 0) for n in [*nodes, *addable.values()])
    gpus = cfg.gpus_per_trial
    if gpus < 0:
        gpus = DEFAULT_GPU_FRACTION if total_gpus else 0.0
    request = {"cpu": cfg.cpus_per_trial, "gpu": gpus}

    def per_node(res: dict[str, float]) -> float:
        return min(res.get("CPU", 0) // request["cpu"],
                   res.get("GPU", 0) // gpus if gpus else math.inf)

    if not any(per_node(n) >= 1 for n in [*nodes, *addable.values()]):
        have = [{"CPU": n.get("CPU", 0), "GPU": n.get("GPU", 0)} for n in nodes]
        kinds = {k: {"CPU": t["CPU"], "GPU": t["GPU"]} for k, t in addable.items()}
        raise ValueError(f"cpus_per_trial={request['cpu']}, gpus_per_trial={gpus}: no node of "
                         f"the cluster has that much (nodes: {have}; node types the autoscaler "
                         f"may add: {kinds or 'none known'})")
    slots = sum(per_node(n) for n in nodes if per_node(n) >= 1)
    workers = [n for n in nodes if "node:__internal_head__" not in n]
    running = dict.fromkeys(types, 0)
    for n in workers:
        kind = next((k for k, t in types.items()
                     if (t["CPU"], t["GPU"]) == (n.get("CPU", 0), n.get("GPU", 0))), None)
        if kind is not None:
            running[kind] += 1
    budget = limit - len(workers)
    for kind in sorted(addable, key=lambda k: -per_node(addable[k])):
        add = min(max(0.0, addable[kind]["max_workers"] - running[kind]), max(0.0, budget))
        if per_node(addable[kind]) >= 1 and add > 0:
            slots += add * per_node(addable[kind])
            budget -= add
            print(f"cluster: the autoscaler may add {add:g} x {kind}, "
                  f"{per_node(addable[kind]):g} trial(s) on each", flush=True)
    return request, max(1, int(slots))


class SweepWandb(tune.Callback):
    """One W&B run per trial, grouped by `<sweep>/<study>`, its id the trial's id, fed from
    Tune's events to one `WandbRuns` actor (Ray's `WandbLoggerCallback` starts a logging
    actor, a queue actor and a W&B service for every trial: about 2 s of CPU each, 17 of the
    50 s of `--smoke` on 2 cores). Every call to the actor is sent without waiting, in
    order; the actor starts with the first result, once the trials have their workers."""

    # Tune's bookkeeping: W&B records time and host itself
    SKIP = {"done", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s",
            "time_since_restore", "iterations_since_restore", "pid", "first_batch_at"}
    UPLOAD_TIMEOUT_S = 60  # an interrupted online sweep must not hang on its uploads

    def __init__(self, sweep: str, run_dir: Path, mode: str, project: str) -> None:
        self.sweep, self.run_dir, self.mode, self.project = sweep, str(run_dir), mode, project
        self.actor: Any = None
        self.started: set[str] = set()

    def _start(self, trial: Any) -> None:
        if self.actor is None:
            # Pinned to the driver's node: the runs are written into the run directory there.
            # No key is handed over (an actor's runtime_env is public through Ray's state
            # API and dashboard): W&B finds it there as it does anywhere, in the netrc
            # `wandb login` wrote or the environment Ray's processes on the node inherited.
            self.actor = ray.remote(WandbRuns).options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=False),
            ).remote(self.run_dir, self.mode, self.project)
        if trial.trial_id not in self.started:
            self.started.add(trial.trial_id)
            study = trial.config["study"]
            self.actor.start.remote(trial.trial_id, str(trial), f"{self.sweep}/{study}", study,
                                    dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._start(trial)
        metrics = {k: v for k, v in result.items() if k not in self.SKIP
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        ended = result.get("status", "running") != "running"  # diverged: status and reason
        summary = {k: result[k] for k in ("status", "message") if ended and k in result}
        self.actor.log.remote(trial.trial_id, metrics, summary)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)  # a trial that ended before its first result still has its run
        self.actor.finish.remote(trial.trial_id, 0)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        self.actor.finish.remote(trial.trial_id, 1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.actor is None:
            return
        try:
            errors = ray.get(self.actor.close.remote(), timeout=self.UPLOAD_TIMEOUT_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            errors = [f"the W&B runs did not finish: {type(e).__name__}: {e}"]
        ray.kill(self.actor)
        self.actor = None
        for error in errors:
            print(f"W&B: {error}", file=sys.stderr, flush=True)


def wandb_callbacks(cfg: SweepConfig, run_dir: Path) -> list[Any]:
    """The W&B callback, its runs written to `<run_dir>/wandb/` on the driver's node."""
    return [] if cfg.wandb == "disabled" else \
        [SweepWandb(cfg.name, run_dir, cfg.wandb, cfg.wandb_project)]


class ReportKernels(tune.Callback):
    """Compiles the report's UMAP kernels in the background from the first trial result on;
    any earlier, their 9 s of CPU would slow the first trials' start on the same cores."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        compile_umap_in_background()


class Progress(tune.Callback):
    """One line per finished trial: its study's done/running/pending and best so far, the
    time elapsed and the budget left."""

    def __init__(self, studies: list[Study], total: int, start: float, deadline: float | None
                 ) -> None:
        self.studies = {s.name: s for s in studies}
        self.total, self.start, self.deadline = total, start, deadline
        self.best: dict[str, float] = {}

    def _line(self, trials: list[Any], trial: Any, event: str) -> None:
        study = self.studies[trial.config["study"]]
        mine = [t for t in trials if t.config.get("study") == study.name]
        done = sum(t.status in ("TERMINATED", "ERROR") for t in mine)
        running = sum(t.status == "RUNNING" for t in mine)
        best = self.best.get(study.name)
        left = "" if self.deadline is None else \
            f", budget left {max(0.0, self.deadline - time.time()) / 60:.1f} min"
        print(f"[{study.name}] trial {trial.trial_id} {event}: {done}/{self.total} done, "
              f"{running} running, {self.total - done - running} pending, best {study.metric} "
              f"{'-' if best is None else f'{best:.4f}'}, "
              f"elapsed {(time.time() - self.start) / 60:.1f} min{left}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        study = self.studies[trial.config["study"]]
        value = result.get(study.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = self.best.get(study.name, value)
            self.best[study.name] = min(best, value) if study.mode == "min" else max(best, value)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "failed")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A study's define-by-run space; a picklable object, since Tune saves the searcher."""

    study: Study
    overrides: dict[str, Any]
    schedule: Schedule
    seed: int

    def __call__(self, trial: Any) -> dict[str, Any]:
        space = get_model_class(self.study.model).search_space
        params = sample_params(trial, space, self.overrides)
        params.setdefault("epochs", self.schedule.max_epochs)  # ASHA's max_t
        # constants returned by a define-by-run space become part of the trial's config
        return {**params, **trial_meta(self.study, self.seed, trial.number, self.schedule)}

    def defaults(self) -> dict[str, Any]:
        """The model's defaults for its task, as far as the space can take them: the first
        trial of the study, so that its best is never below `train` with defaults."""
        space = get_model_class(self.study.model).search_space
        values = dataclasses.asdict(make_params(self.study.model, self.study.task))
        return default_point(space, self.overrides, values)


def trial_meta(study: Study, seed: int, number: int, schedule: Schedule) -> dict[str, Any]:
    """What a trial's config carries beside its hyperparameters (trainable.META)."""
    return {"study": study.name, "model": study.model, "task": study.task, "seed": seed,
            "metric": study.metric, "number": number, "rungs": list(schedule.rungs)}


class SavedSearcher(Searcher):
    """A searcher whose whole state Tune saves with the experiment (for `--resume`)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class StudySearch(SavedSearcher):
    """All studies in one Tune experiment: a seeded Optuna TPE search per study, each with its
    own metric and direction, taking turns to suggest until each has `trials`.

    One experiment, not one Tuner per study, so that workers are reused across studies and
    the studies share the cluster and the time budget as they run (Ray runs one Tuner at a
    time in a driver). Tune saves this object with the experiment, so `--resume` continues
    every study's search.

    What Optuna is told: each study's first trial is the model's defaults (enqueued); TPE's
    random start-up follows the budget (`startup_trials`); a trial's intermediate values are
    reported at its epochs; a trial that ended on its own is complete with its best
    validation value (the state the sweep would choose), one that diverged or raised has
    failed, and one stopped from outside (ASHA, Ctrl-C, the time budget) is pruned, so TPE
    does not take a truncated score for a final one.
    """

    def __init__(self, studies: list[Study], cfg: SweepConfig, plan: dict[str, Schedule],
                 storage: Any = None) -> None:
        super().__init__()
        self.trials = cfg.trials
        self.searches = {}
        for s in studies:
            space = SearchSpace(s, cfg.search_space.get(s.model, {}), plan[s.name], cfg.seed)
            self.searches[s.name] = OptunaSearch(
                space=space, metric=s.metric, mode=s.mode, points_to_evaluate=[space.defaults()],
                sampler=TPESampler(seed=cfg.seed, n_startup_trials=startup_trials(cfg)),
                storage=storage, study_name=s.name)
        self.owner: dict[str, str] = {}  # trial id -> study name

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        counts = collections.Counter(self.owner.values())
        open_ = [name for name in self.searches if counts[name] < self.trials]
        if not open_:
            return Searcher.FINISHED
        name = min(open_, key=lambda n: counts[n])  # the study with fewest trials, in order
        self.owner[trial_id] = name
        return self.searches[name].suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna's step is the epoch (Tune's training_iteration counts reports, not epochs)
        self.searches[self.owner[trial_id]].on_trial_result(
            trial_id, {**result, "training_iteration": result["epoch"]})

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        search = self.searches[self.owner[trial_id]]
        status = (result or {}).get("status")
        if status in ("epochs", "early_stopped"):
            result = {**result, search.metric: result["best_value"]}
        elif status == "diverged":  # failed (Optuna refuses a NaN value and keeps it RUNNING)
            result, error = None, True
        else:
            result = None  # stopped from outside: pruned, with its intermediate values
        search.on_trial_complete(trial_id, result, error)


class StudyASHA(FIFOScheduler):
    """An ASHA scheduler per study (its metric, direction, max epochs and grace period),
    routed by the trial's study: trials are compared with the trials of their own study
    only. A study's defaults trial (number 0) is recorded at the rungs like any other but
    never stopped: it is what the search must beat."""

    def __init__(self, studies: list[Study], cfg: SweepConfig,
                 plan: dict[str, Schedule]) -> None:
        super().__init__()
        self.ashas = {s.name: ASHAScheduler(
            metric=s.metric, mode=s.mode, time_attr="epoch", max_t=plan[s.name].max_epochs,
            grace_period=plan[s.name].grace_period, reduction_factor=cfg.reduction_factor)
            for s in studies}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any
                              ) -> bool:
        return True  # each study's ASHA has its own metric and mode

    def _asha(self, trial: Any) -> ASHAScheduler:
        return self.ashas[trial.config["study"]]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = self._asha(trial).on_trial_result(tune_controller, trial, result)
        return self.CONTINUE if trial.config.get("number") == 0 else decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)


class Configs(SavedSearcher):
    """The given trial configs, in order (the studies' configs differ in their keys, which
    Tune's `points_to_evaluate` does not allow)."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = list(configs)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass


def _experiment(trainable: Any, name: str, cfg: SweepConfig, slots: int, search_alg: Any,
                trials: int, callbacks: list[Any] | None = None, **tune_config: Any
                ) -> tune.Tuner:
    """A Tune experiment `name` of `trials` trials in the run directory, at most `slots` at
    once. Actors are reused (a new worker costs seconds of imports per trial; run_trial frees
    what a stopped predecessor left on the device); a trial that fails restarts from its last
    checkpoint, up to `max_failures` times."""
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=trials,
                                    max_concurrent_trials=min(slots, trials),
                                    reuse_actors=True, **tune_config),
        run_config=tune.RunConfig(
            name=name, storage_path=experiment_root(cfg),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            callbacks=callbacks, verbose=0))


def _records(grid: Any, plan: dict[str, Schedule], stopped: bool) -> list[TrialRecord]:
    """One TrialRecord per Tune result, in the grid's order; `stopped`: the sweep was
    interrupted or ran out of time (a trial stopped then is not ASHA's)."""
    out = []
    for res in grid:
        meta, hparams = split_config(res.config)
        history = res.metrics_dataframe
        last = res.metrics or {}
        best, best_epoch = None, 0
        if history is not None and meta["metric"] in history:
            values = history[meta["metric"]]
            if values.notna().any():
                at = values.idxmin() if lower_is_better(meta["metric"]) else values.idxmax()
                best, best_epoch = float(values[at]), int(history["epoch"][at])
        status, epoch = last.get("status"), int(last.get("epoch", 0) or 0)
        if res.error:
            end = "error"
        elif status in ("epochs", "early_stopped", "diverged"):
            end = status
        elif status is None:
            end = "pending"
        else:  # stopped from outside while running
            rungs = plan[meta["study"]].rungs if meta["study"] in plan else ()
            end = "asha" if epoch in rungs and not stopped else "interrupted"
        message = str(res.error).splitlines()[0] if res.error else last.get("message", "")
        out.append(TrialRecord(
            study=meta["study"], trial_id=last.get("trial_id", os.path.basename(str(res.path))),
            number=int(meta.get("number", -1)), end=end, message=message, best=best,
            best_epoch=best_epoch, epochs=epoch,
            time_s=float(last.get("time_total_s", 0.0) or 0.0), hparams=hparams,
            seed=int(meta["seed"]), checkpoint=res.checkpoint, path=str(res.path)))
    return out


def _history(res: Any) -> Any:
    """A trial's per-epoch metrics (the learning curve), tagged with its study and id."""
    frame = res.metrics_dataframe
    keep = [c for c in frame.columns if c.startswith(("val/", "train/"))
            or c in ("epoch", "trial_id", "time_total_s")]
    return frame[keep].assign(study=res.config["study"])


def run_sweep(cfg: SweepConfig, resume: str | Path | None = None) -> Path:
    """Run (or continue) a sweep; returns the run directory holding the results. After a
    Ctrl-C it writes the table, exports and report of what finished, then raises
    KeyboardInterrupt.

    resolve config -> connect -> prepare data -> search -> finalize (choose, test, seeds,
    baselines) -> tables -> export -> report.
    """
    if resume is not None:
        cfg = load_run_config(resume)
        if not tune.Tuner.can_restore(f"{experiment_root(cfg)}/{SEARCH}"):
            raise ValueError(f"--resume {resume}: no experiment to continue in "
                             f"{experiment_root(cfg)}/{SEARCH}; start a new sweep instead")
    elif not cfg.name:
        cfg = dataclasses.replace(cfg, name=time.strftime("sweep-%Y%m%d-%H%M%S"))
    elif (run_dir_of(cfg) / "sweep.yaml").exists() or \
            tune.Tuner.can_restore(f"{experiment_root(cfg)}/{SEARCH}"):
        raise ValueError(f"--name {cfg.name}: {run_dir_of(cfg)} already holds a sweep; "
                         f"continue it with --resume {run_dir_of(cfg)}, or choose another "
                         "--name")
    studies = check_config(cfg)
    cfg = resolved(cfg)
    plan = schedules(cfg, studies)
    if cfg.trials <= cfg.startup_trials:
        print(f"search: {cfg.trials} trials per study, within TPE's {cfg.startup_trials} "
              "random start-up trials: after the defaults trial this is a random search",
              flush=True)
    start = time.time()
    budget = parse_duration(cfg.time_budget)
    deadline = None if budget is None else start + budget

    quiet_libraries()
    # Ray first: the workers it starts import the trials' modules (orchestrator.warm) while
    # the data loads
    connect(cfg)
    request, slots = resources(cfg)
    print(f"cluster: {ray.cluster_resources()}; per trial {request}; up to {slots} at once",
          flush=True)
    data = load_dataset(cfg.data)
    if any(s.task != "rating" for s in studies):
        check_ks(tuple(cfg.train.ks), data)
    print(f"data: {data.name} ({data.n_users} users, {data.n_items} items, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test, "
          f"split {data.split_name})", flush=True)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "sweep.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    write_text(run_dir / "data.json", json.dumps(
        {"fingerprint": data.fingerprint, **describe(data)}, indent=2, default=str))

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, train_cfg=cfg.train), request)

    with ctrl_c_stops_studies() as stop:
        path = f"{experiment_root(cfg)}/{SEARCH}"
        if tune.Tuner.can_restore(path):
            print(f"search: resuming from {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            callbacks = [Progress(studies, cfg.trials, start, deadline), ReportKernels(),
                         *wandb_callbacks(cfg, run_dir)]
            left = None if deadline is None else max(1.0, deadline - time.time())
            tuner = _experiment(trainable, SEARCH, cfg, slots, StudySearch(studies, cfg, plan),
                                cfg.trials * len(studies), callbacks,
                                scheduler=StudyASHA(studies, cfg, plan), time_budget_s=left)
        grid = [] if stop.is_set() else _fit(tuner, path, trainable, cfg, deadline, stop)
        out_of_time = deadline is not None and time.time() >= deadline
        trials = _records(grid, plan, stop.is_set() or out_of_time)
        histories = [_history(res) for res in grid if res.metrics_dataframe is not None]
        chosen = {s.name: choose([t for t in trials if t.study == s.name], s) for s in studies}
        found = [t for t in chosen.values() if t is not None]
        seed_trials = _seed_runs(found, studies, plan, cfg, slots, trainable) \
            if cfg.final_seeds > 1 and found and not stop.is_set() else []
        why_empty = "interrupted" if stop.is_set() else \
            "time budget spent" if out_of_time else "no trial ran"
        studied = finalize(studies, trials, seed_trials, cfg.baselines, data, cfg.train,
                           cfg.seed, run_dir, why_empty)
        by_name = {s.name: s for s in studies}
        results.write_trials(run_dir, [t.row(by_name[t.study]) for t in trials], histories)
        frame = results.table(studied)
        results.write(run_dir, frame)
        results.write_units(run_dir, studied)
        if any((run_dir / "checkpoints").glob("*.pt")):
            outcome = export_run(run_dir, data=data)
            failed = {k: v for k, v in outcome.items() if v != "ok"}
            if failed:
                print(f"ONNX export FAILED for {failed}", file=sys.stderr, flush=True)
            frame = results.load(run_dir)
        print(results.markdown(frame), flush=True)
        try:
            write_report(run_dir)
        except Exception as e:  # noqa: BLE001 - a plotting bug must not cost a night's table
            print(f"report: FAILED ({type(e).__name__}: {e}); the table and models are written; "
                  f"retry with: python -m orchestrator report {run_dir}", file=sys.stderr)
        print(f"run directory: {run_dir}", flush=True)
        if stop.is_set():
            print(f"interrupted: the table holds what finished; continue with: "
                  f"python -m orchestrator sweep --resume {run_dir}", flush=True)
            raise KeyboardInterrupt  # everything is written; the caller learns it was cut
    return run_dir


@contextlib.contextmanager
def ctrl_c_stops_studies() -> Iterator[threading.Event]:
    """While the sweep runs, a first Ctrl-C sets the event it yields and stops the search
    the way Tune stops on its own (its SIGUSR1 handler: the running trials end, their
    results are kept); no further trial starts, and the table, exports and report are still
    written. A second Ctrl-C aborts. (Tune's own SIGINT handler would stop the search too,
    but not say so: a stopped trial looks like one that ASHA stopped.)"""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread only
        return

    def on_ctrl_c(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("Ctrl-C: stopping the running trials; the table of what finished follows "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's, once the search has started
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler


def _fit(tuner: tune.Tuner, path: str, trainable: Any, cfg: SweepConfig,
         deadline: float | None, stop: threading.Event) -> Any:
    """`tuner.fit()`, then resume the trials that died with their node before Tune could
    restart them. (Tune 2.60 recovers a RUNNING trial on a lost node, but a trial whose reused
    actor dies while it is being reset, still PENDING, ends as ERROR: a race seen when a node
    goes away as one trial ends and the next takes over its actor.)"""
    grid = tuner.fit()
    for _ in range(cfg.max_failures):
        lost = [r for r in grid if isinstance(r.error, ray.exceptions.RayActorError)]
        if not lost or stop.is_set() or (deadline is not None and time.time() >= deadline):
            break
        print(f"search: {len(lost)} trial(s) lost with their node; resuming them", flush=True)
        grid = tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    return grid


def _seed_runs(chosen: list[TrialRecord], studies: list[Study], plan: dict[str, Schedule],
               cfg: SweepConfig, slots: int, trainable: Any) -> list[TrialRecord]:
    """Retrain each study's chosen configuration with `final_seeds - 1` more seeds (no
    search), all studies in one experiment; returns the finished runs."""
    path = f"{experiment_root(cfg)}/{SEEDS}"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        by_name = {s.name: s for s in studies}
        points = [{**t.hparams, **trial_meta(by_name[t.study], cfg.seed + i, t.number,
                                             plan[t.study])}
                  for t in chosen for i in range(1, cfg.final_seeds)]
        tuner = _experiment(trainable, SEEDS, cfg, slots, Configs(points), len(points))
    return [t for t in _records(tuner.fit(), plan, False) if t.end in ("epochs", "early_stopped")
            and t.checkpoint is not None]


def load_run_config(run_dir: str | Path) -> SweepConfig:
    """The resolved config of an earlier sweep, for `--resume`."""
    path = Path(run_dir) / "sweep.yaml"
    if not path.exists():
        raise ValueError(f"--resume {run_dir}: not a sweep run directory (no sweep.yaml)")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError("empty, or not a mapping")
        cfg = from_dict(SweepConfig, loaded, complete=True)
    except (ValueError, TypeError, yaml.YAMLError) as e:
        raise ValueError(f"--resume {run_dir}: {path} is not the whole config a sweep wrote "
                         f"({str(e).splitlines()[0]}); it may be truncated or edited") from None
    # a moved run directory resumes where it now is
    storage = cfg.storage if "://" in cfg.storage else str(Path(run_dir).resolve().parent)
    return dataclasses.replace(cfg, storage=storage, name=Path(run_dir).resolve().name)
