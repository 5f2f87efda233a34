"""What several test modules share: the package's modules as they lie on disk, and the
command line run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "orchestrator"
SECRET = "recsweep-test-secret-key-0123456789abcdef"  # a W&B key that must reach no file
# the studies of the suite's smoke sweep (conftest's `smoke_run`), in its table's order
SMOKE_STUDIES = [
    *("mf", "autorec", "bias", "mf-ranking", "neumf", "caser"),
    *("itemknn", "ease", "rp3beta", "puresvd", "ials", "pop"),
]


def package_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of `orchestrator` and its subpackages
    (`orchestrator/data` and `orchestrator/models` are links to the top-level folders)."""
    folders = {"orchestrator": PACKAGE} | {
        f"orchestrator.{sub.name}": sub
        for sub in sorted(PACKAGE.iterdir())
        if (sub / "__init__.py").is_file()
    }
    return {
        (package if path.stem == "__init__" else f"{package}.{path.stem}"): path
        for package, folder in folders.items()
        for path in sorted(folder.glob("*.py"))
    }


def run_cli(
    *args: str,
    env: dict | None = None,
    timeout: int = 240,
    cwd: Path = REPO,
    command: tuple[str, ...] = (sys.executable, "-m", "orchestrator"),
) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` (or `command ARGS`) in a subprocess, its output text."""
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
