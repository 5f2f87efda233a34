"""The Ray cluster a sweep runs on: connect (or start a local Ray), and size each trial's
request from what the cluster has and what its autoscaler can add."""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

import ray
import yaml

from orchestrator import internals
from orchestrator.config import SweepConfig

DEFAULT_GPU_FRACTION = 0.25


def connect(cfg: SweepConfig) -> None:
    """Join the cluster at `address` (or start a local one) and fail early if unreachable."""
    if ray.is_initialized():
        return
    host, _, port = cfg.address.rpartition(":")
    if host and port.isdigit():
        # ray.init retries an unreachable GCS for minutes; a plain TCP probe answers at once
        try:
            socket.create_connection((host.removeprefix("ray://"), int(port)), timeout=5).close()
        except OSError as e:
            raise ValueError(
                f"address: cannot reach a Ray cluster at {cfg.address!r}: {e}"
            ) from None
    try:
        if cfg.address or os.environ.get("RAY_ADDRESS"):  # as `ray job submit` sets it
            ray.init(
                address=cfg.address or None, log_to_driver=False, logging_level=logging.WARNING
            )
        else:
            internals.quiet_token_auth_warning()  # Ray's default (token auth on) is what we want
            ray.init(log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ValueError(f"address: cannot reach a Ray cluster at {cfg.address!r}: {e}") from None


def quiet_libraries() -> None:
    """Our progress lines say what matters; Tune's chatter drowns them (Optuna's:
    `search.quiet_optuna`)."""
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # tune.run's warnings are about its own signal handling and say to resume with
    # `Tuner.restore`: the sweep says what happened and to use --resume
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # Tune snapshots its state every num_to_keep checkpoints of a trial (what --resume
    # needs) and warns about it each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's output engine prints a configuration box and a TensorBoard hint into Ray's
    # temporary folder whatever the verbosity; the legacy reporter at verbose=0 prints nothing
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


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
        raise ValueError(
            f"{path}: expected an autoscaler config with a non-empty mapping `available_node_types`"
        )
    limit = doc.get("max_workers", math.inf)  # Ray's default per-type max is the global one
    if not isinstance(limit, (int, float)):
        raise ValueError(f"{path}: max_workers: expected a number, got {limit!r}")
    out = {}
    for name, spec in types.items():
        if name == doc.get("head_node_type"):
            continue
        spec = spec if isinstance(spec, dict) else {}
        res, count = spec.get("resources") or {}, spec.get("max_workers", limit)
        if not isinstance(res, dict) or not all(
            isinstance(v, (int, float)) for v in [*res.values(), count]
        ):
            raise ValueError(
                f"{path}: available_node_types.{name}: expected `resources` "
                "mapping to numbers and a numeric `max_workers`"
            )
        if not res and count:
            # `ray up` writes detected resources into the bootstrap copy, not into cluster.yaml
            print(
                f"cluster: node type {name!r} in {path} states no resources; not counted",
                flush=True,
            )
        out[name] = {
            "CPU": float(res.get("CPU", 0)),
            "GPU": float(res.get("GPU", 0)),
            "max_workers": float(count),
        }
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
        return min(
            res.get("CPU", 0) // request["cpu"], res.get("GPU", 0) // gpus if gpus else math.inf
        )

    if not any(per_node(n) >= 1 for n in [*nodes, *addable.values()]):
        have = [{"CPU": n.get("CPU", 0), "GPU": n.get("GPU", 0)} for n in nodes]
        kinds = {k: {"CPU": t["CPU"], "GPU": t["GPU"]} for k, t in addable.items()}
        raise ValueError(
            f"cpus_per_trial={request['cpu']}, gpus_per_trial={gpus}: no node of "
            f"the cluster has that much (nodes: {have}; node types the autoscaler "
            f"may add: {kinds or 'none known'})"
        )
    slots = sum(per_node(n) for n in nodes if per_node(n) >= 1)
    workers = [n for n in nodes if not internals.is_head_node(n)]
    running = dict.fromkeys(types, 0)
    for n in workers:
        kind = next(
            (
                k
                for k, t in types.items()
                if (t["CPU"], t["GPU"]) == (n.get("CPU", 0), n.get("GPU", 0))
            ),
            None,
        )
        if kind is not None:
            running[kind] += 1
    budget = limit - len(workers)
    for kind in sorted(addable, key=lambda k: -per_node(addable[k])):
        add = min(max(0.0, addable[kind]["max_workers"] - running[kind]), max(0.0, budget))
        if per_node(addable[kind]) >= 1 and add > 0:
            slots += add * per_node(addable[kind])
            budget -= add
            print(
                f"cluster: the autoscaler may add {add:g} x {kind}, "
                f"{per_node(addable[kind]):g} trial(s) on each",
                flush=True,
            )
    return request, max(1, int(slots))
