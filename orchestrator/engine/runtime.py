"""The process a training run lives in: its device, its seeds, and its C heap."""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; otherwise the named device, which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={name!r}: CUDA is not available on this machine (use --device cpu or auto)"
        )
    return device


TRIM_EVERY = 500  # batches between two trim_heap calls


@functools.cache
def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's `malloc_trim`; a no-op
    elsewhere). A training step frees and allocates buffers of changing sizes (the rows a
    batch touches), and glibc's heap fragments under that: NeuMF on ml-20m's shape grew from
    2.2 to 5.1 GB of RSS in 10k batches (17.5 GB over an epoch), and ran slower. Trimming
    every `TRIM_EVERY` batches keeps it flat at no measurable cost (bench/RESULTS.md)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA): call before `create_model`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
