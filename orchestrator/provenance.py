"""What produced a run: library versions, the project's version and git commit, the
command line, and the nodes that ran trials. The sweep writes it to `env.json` in the run
directory, and every ONNX sidecar carries the versions (`environment`).

Read-only and cheap: versions come from the installed packages' metadata; torch's CUDA and
cuDNN versions only when torch is already imported (the `recommend` path never imports it).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "recsweep",
    "torch",
    "ray",
    "optuna",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "numpy",
    "pandas",
    "pyarrow",
    "wandb",
)
ROOT = Path(__file__).resolve().parents[1]


def version(package: str) -> str | None:
    """An installed package's version, None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache  # once per process: every export's sidecar asks
def git_state(root: Path = ROOT) -> dict[str, Any] | None:
    """The project's git commit and whether the working tree differs from it (None when the
    code does not run from a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def versions() -> dict[str, Any]:
    """Python and the libraries' versions; CUDA and cuDNN when torch is loaded and has them."""
    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    out.update({name: version(name) for name in PACKAGES})
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return out


def describe_version() -> str:
    """`recsweep 0.1.0 (git 1a2b3c4, dirty)`, for `--version`."""
    git = git_state()
    where = "" if git is None else f" (git {git['commit'][:7]}{', dirty' if git['dirty'] else ''})"
    return f"recsweep {version('recsweep') or 'unknown'}{where}"


def environment(nodes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The run's record: versions, git state, the command line, this host, and `nodes`
    (the hosts and devices that ran trials)."""
    return {
        "versions": versions(),
        "git": git_state(),
        "command": list(sys.argv),
        "driver_host": socket.gethostname(),
        "nodes": nodes or [],
    }
