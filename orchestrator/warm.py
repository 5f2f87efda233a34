"""Warm workers for a local Ray: the first trials start in processes that have already
imported torch, Ray Tune and the models.

A fresh Ray worker spends about 2.6 s of CPU importing what a trial needs before its first
batch: torch (1.0 s), the torch._dynamo that building an optimizer imports (0.9 s), Ray Tune
and pandas (0.6 s). When the sweep starts a local Ray, `warm_workers` leaves one token per
CPU in a folder and asks Ray to import this module in every worker process it starts (its
`preload_python_modules`). Ray starts one idle worker per CPU as the driver connects; those
claim the tokens and import the trial's modules while the driver loads the data and sets up
the search, and Tune's first trial actors start in them (see `cluster.warm_start_trials`).
Processes started later (the sweep's W&B actor) find no token left and stay light.

Every process of that Ray inherits the token folder's path, so it also names them: when the
driver exits, `stop` shuts Ray down and kills what outlived it (`reap`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

TOKENS = "RECSWEEP_WARM_TOKENS"


def local_cpus() -> int:
    """The CPUs a local Ray counts (cgroup quotas included), one prestarted worker each. A
    token too many would make a later process (a W&B actor) import torch for nothing."""
    try:
        from ray._private.utils import get_num_cpus  # no public API says it

        return int(get_num_cpus())
    except (ImportError, AttributeError, TypeError):
        return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def warm_workers() -> Iterator[dict]:
    """Around a local `ray.init`: yields its `_system_config`, with a token for each of
    the first `local_cpus()` worker processes. Ray's processes inherit the token folder's
    path from the environment as they start; the driver's own is restored after.

    Ray kills idle workers beyond a soft limit that by default counts the CPUs still
    unreserved: once Tune's placement groups reserve them all, an idle warm worker is
    killed before the trial actor asks for it, and the actor starts cold (about 1 sweep in
    5 at the first wave, and in most runs where the workers idled before the search). A
    limit of one idle worker per CPU keeps them."""
    folder = tempfile.mkdtemp(prefix="recsweep-warm-")
    atexit.register(stop, folder)
    cpus = local_cpus()
    for i in range(cpus):
        Path(folder, str(i)).touch()
    before = os.environ.get(TOKENS)
    os.environ[TOKENS] = folder
    try:
        yield {"preload_python_modules": [__name__], "num_workers_soft_limit": cpus}
    finally:
        if before is None:
            os.environ.pop(TOKENS, None)
        else:
            os.environ[TOKENS] = before


def stop(folder: str) -> None:
    """At exit (before Ray's own exit hook, registered when Ray was imported): shut the local
    Ray down, waiting for its processes, then kill any that outlived it.

    A Ray worker can deadlock in its own exit (Ray's C++ core worker, destroying a pending
    publisher while it shuts its event loop down): 2 of 96 W&B logging actors (one per trial,
    with Ray's W&B callback) in 12 short sweeps here, each left alive with 200-430 MB."""
    import ray

    ray.shutdown(wait_for_processes=True)
    reap(folder)
    shutil.rmtree(folder, ignore_errors=True)


def reap(folder: str) -> None:
    """Kill the processes started with this token folder in their environment (those of
    the local Ray that `warm_workers` started). Linux (`/proc`) only."""
    mark = f"{TOKENS}={folder}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(environ.parent.name)
            if pid != os.getpid() and mark in environ.read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)


def _claim(folder: str) -> bool:
    """Take one token (removing a file is atomic: each goes to one process)."""
    for token in sorted(Path(folder).glob("*")):
        with contextlib.suppress(FileNotFoundError):
            token.unlink()
            return True
    return False


# whether this process took a token: it imported the trial's modules as it started
CLAIMED = bool(os.environ.get(TOKENS)) and _claim(os.environ[TOKENS])
if CLAIMED:
    import torch._dynamo  # noqa: F401

    import orchestrator.trainable  # noqa: F401
