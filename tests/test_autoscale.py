"""Autoscaling on one machine: Ray's fake multi-node provider adds GPU workers for a sweep.

The head (1 CPU, no GPU) runs Ray's autoscaler (v1) with a `fake_multinode` provider whose
"nodes" are extra raylets on this machine; the GPU worker type has `min_workers: 0`. A sweep
whose trials each ask for 1 GPU can only run if the autoscaler adds workers, and the sweep
sizes its concurrency from the node types in the autoscaler config.

Isolation from other Ray users of this machine: a free GCS port, a private `--temp-dir` (so
no `/tmp/ray/ray_current_cluster` that a plain `ray.init()` elsewhere would join), the sweep
pointed at this head by `RAY_ADDRESS` (so `--address auto` cannot pick another cluster), and
no `ray stop`, which would kill every Ray on the machine: the head runs as
`ray start --head --block` in its own session; teardown sends SIGTERM to that process group,
gives the fake workers' raylets (which linger without their GCS) 5 s, SIGKILLs what is left
of the cluster's process tree, and fails if any of it still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_shared_ray")]  # a Ray of its own

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
HEAD_ID = "f" * 51 + "00000"  # the fake provider's head; its workers are ...00001, ...
DATASET = "synthetic:users=300,items=400,interactions=8000,seed=0"


def ray_env(**extra: str) -> dict[str, str]:
    """This process's environment for the cluster's processes and its clients."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # ours is explicit
    # A ~/.ray/auth_token makes `ray start` require tokens, which a driver given an explicit
    # address does not send; this test cluster runs without.
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_enable_autoscaler_v2"] = "0"  # v2 needs fake_multi_node/example.yaml, absent in 2.60
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_cluster(gcs_address: str, max_workers: int, gpu_max_workers: int) -> dict:
    """An autoscaler config for the fake provider: a CPU head and a 1-GPU worker type."""
    small_store = {"object_store_memory": 100_000_000}  # 100 MB per node, not 30% of RAM
    return {
        "cluster_name": "recsweep-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,  # workers stay for the checks
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
            "launch_multiple": True,
        },
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": 1, **small_store},
                "node_config": {},
                "max_workers": 0,
            },
            "gpu_worker": {
                "resources": {"CPU": 1, "GPU": 1, **small_store},
                "node_config": {},
                "min_workers": 0,
                "max_workers": gpu_max_workers,
            },
        },
        # keys `ray up` would fill in; the v1 autoscaler reads them from this file as is
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def processes() -> dict[int, tuple[int, str, str]]:
    """Every live process: pid -> (parent pid, state, command line), from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]  # the name may hold spaces
        if state != "Z":
            out[int(entry.name)] = (int(ppid), state, cmdline)
    return out


def cluster_processes(head: int, temp_dir: Path) -> set[int]:
    """The head's process tree plus anything naming the cluster's temp dir (fake workers)."""
    table = processes()
    found = {pid for pid, (_, _, cmd) in table.items() if str(temp_dir) in cmd} | {head}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in found}
        grew = not children <= found
        found |= children
    return found


@pytest.fixture
def autoscaling_head(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fake autoscaling cluster's head; yields (GCS address, autoscaler config path)."""
    import ray.util

    # short: Ray's socket paths live under it and must fit in 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="rsas-", dir="/tmp"))
    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    config = tmp_path / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(fake_cluster(address, max_workers=3, gpu_max_workers=2)))
    log = tmp_path / "head.log"
    # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM stop at once, not after a 30 s drain
    env = ray_env(
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--head",
                "--block",
                "--num-cpus=1",
                f"--port={port}",
                "--object-store-memory=100000000",
                f"--temp-dir={temp_dir}",
                "--include-dashboard=false",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--autoscaling-config={config}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 60
        # `ray start` writes the address file once the head is up
        while not (temp_dir / "ray_current_cluster").exists():
            assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield address, config
    finally:
        procs = cluster_processes(head.pid, temp_dir)
        with contextlib.suppress(ProcessLookupError):  # the head may have failed to start
            os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        # The fake workers' raylets linger for seconds once their GCS is gone (the head's own
        # processes are gone with it): a short grace, then SIGKILL.
        deadline = time.time() + 5
        while (alive := procs & set(processes())) and time.time() < deadline:
            time.sleep(0.2)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        escaped = (procs | cluster_processes(head.pid, temp_dir)) & set(processes())
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not escaped, f"processes of the test cluster survived SIGKILL: {escaped}"


INSPECT = """
import dataclasses, json, sys, ray
from orchestrator.cluster import connect, resources
from orchestrator.plan import load_config
address, *configs = sys.argv[1:]
slots = []
for path in configs:
    cfg = load_config(None, {"address": address, "autoscaler_config": path,
                             "gpus_per_trial": 1, "cpus_per_trial": 1})
    connect(cfg)
    slots.append(resources(cfg)[1])
try:  # no node, alive or addable, has 2 GPUs
    resources(dataclasses.replace(cfg, gpus_per_trial=2.0))
    error = ""
except ValueError as e:
    error = str(e)
nodes = {n["NodeID"]: n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]}
print(json.dumps({"slots": slots, "error": error, "nodes": nodes}))
"""


def test_sweep_makes_the_autoscaler_add_gpu_workers(
    autoscaling_head: tuple[str, Path], tmp_path: Path
) -> None:
    address, autoscaler_config = autoscaling_head
    # On a `ray up` head the autoscaler config is ~/ray_bootstrap_config.yaml, which the sweep
    # reads by default when joining a cluster; here HOME points at a copy.
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(autoscaler_config, home / "ray_bootstrap_config.yaml")
    start = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "sweep",
            "--address",
            "auto",
            "--models",
            "mf",
            "--baselines",
            "",  # the trials of mf alone
            "--trials",
            "4",
            "--epochs",
            "2",
            "--gpus-per-trial",
            "1",
            "--cpus-per-trial",
            "1",
            "--wandb",
            "disabled",
            "--dataset",
            DATASET,
            "--storage",
            str(tmp_path),
            "--name",
            "auto",
        ],
        cwd=REPO,
        env=ray_env(RAY_ADDRESS=address, HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.time() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The head alone has no GPU: concurrency comes from the 2 workers the autoscaler may add.
    assert "up to 2 at once" in done.stdout, done.stdout[-3000:]
    trials = pd.read_parquet(tmp_path / "auto" / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert trials["end"].isin(["epochs", "early_stopped", "asha"]).all(), trials[
        ["trial_id", "end", "message"]
    ]

    # The same cluster read with a tighter global bound (max_workers 2 < 3 of the type).
    bounded = tmp_path / "bounded.yaml"
    bounded.write_text(yaml.safe_dump(fake_cluster(address, max_workers=2, gpu_max_workers=3)))
    inspect = subprocess.run(
        [sys.executable, "-c", INSPECT, address, str(autoscaler_config), str(bounded)],
        cwd=REPO,
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    state = json.loads(inspect.stdout.strip().splitlines()[-1])

    # Alive GPU nodes: only the fake provider makes them (ids fff...f0000N), within max 2.
    workers = {n for n, gpus in state["nodes"].items() if gpus > 0}
    assert HEAD_ID in state["nodes"] and HEAD_ID not in workers
    assert 1 <= len(workers) <= 2, state["nodes"]
    assert all(n.startswith(HEAD_ID[:51]) for n in workers), workers
    # With k workers alive, each config allows 2 in all: k alive + (2 - k) still addable. A
    # count that ignored the alive workers of the type (first) or the global bound (second)
    # would give 3.
    assert state["slots"] == [2, 2], state
    # A trial no node can ever host: a clear error instead of a sweep pending all night.
    assert "no node of the cluster has that much" in state["error"], state["error"]
    assert "gpu_worker" in state["error"], state["error"]

    # Every trial ran on one of the added GPU workers (the trials table's `node`).
    placed = set(trials["node"])
    assert placed <= workers, (placed, workers)
    print(f"sweep took {took:.1f} s on {len(workers)} fake GPU worker(s)")
