"""Every use of a library's private interface, in one place.

Each function names the public API that is missing and falls back to a public path that
keeps the sweep correct, only slower or less precise, when the internal moves in a later
release. `RECSWEEP_NO_INTERNALS=1` forces every fallback (a test runs a sweep that way).
Nothing else in the project imports an underscore name from Ray, Tune or torch.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

FORCE_FALLBACKS = "RECSWEEP_NO_INTERNALS"


def forced() -> bool:
    """Whether the fallbacks are forced (`RECSWEEP_NO_INTERNALS=1`)."""
    return os.environ.get(FORCE_FALLBACKS) == "1"


# Ray: `ray.nodes()` does not say which node is the head; Ray gives the head a resource of
# this name. Fallback: no node is taken for the head, so the head counts against the
# autoscaler's `max_workers` and the sweep plans one worker node fewer (fewer trials at once).
HEAD_RESOURCE = "node:__internal_head__"


def is_head_node(resources: dict[str, float]) -> bool:
    """Whether a node (its `ray.nodes()` "Resources") is the cluster's head."""
    return not forced() and HEAD_RESOURCE in resources


def coo_entries(grad: Tensor) -> tuple[Tensor, Tensor]:
    """The row indices and values of a sparse COO gradient (`[nnz]`, `[nnz, d]`), duplicates
    left in (an embedding's gradient holds one entry per looked-up row).

    torch: `Tensor.indices()/values()` refuse an uncoalesced tensor; `_indices()/_values()`
    read it as it is. Fallback: `coalesce()` first (a sort over the batch's entries: the
    same rows and sums, about a quarter slower per step on large tables here)."""
    if not forced():
        try:
            return grad._indices()[0], grad._values()
        except AttributeError:
            pass
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()


def cache_torchlib_ops() -> None:
    """Let torch's ONNX exporter list onnxscript's ATen functions once per process, not per
    graph: every `torch.onnx.export` rebuilds its registry, and onnxscript's
    `get_torchlib_ops` parses the source of each of its functions to do it (half a graph's
    export time: bench/RESULTS.md). torch has no public way to keep a registry; it is
    reached through torch's lazy import of onnxscript. Fallback: each export lists them
    again (slower)."""
    if forced():
        return
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis

        # torch types onnxscript_apis as the module it names; at run time a _LazyModule
        module = importlib.import_module(onnxscript_apis._name)  # type: ignore[attr-defined]
        if not hasattr(module.get_torchlib_ops, "cache_info"):
            # typeshed's ModuleType lets any attribute be read, none be set
            module.get_torchlib_ops = functools.cache(  # type: ignore[attr-defined]
                module.get_torchlib_ops
            )
    except (ImportError, AttributeError):
        pass


def quiet_onnx_registration() -> None:
    """The exporter warns on every export that torchvision's ops are not registered (we use
    none), from a logger named after a private module. Fallback (a renamed module): the
    warning shows."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


# Ray 2.59+: a local instance starts with token authentication on (what the sweep wants) and
# warns about that default at every start. No public switch quiets that one warning: setting
# RAY_AUTH_MODE once `ray` is imported leaves the driver's cached config behind, and the
# cluster then refuses the driver. Its logger is named after a private module. Fallback: the
# warning shows.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_token_auth_warning() -> None:
    """Hide Ray's warning that a local instance uses token authentication by default."""
    if not forced():
        logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)
