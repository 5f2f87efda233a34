"""Recommender models by name. Importing this package registers every model.

This folder is the top-level `models/`; it imports as `orchestrator.models` (through the
link `orchestrator/models`), never as `models`, so a user's own `models/` folder shadows
nothing.
"""

from orchestrator.models import (  # noqa: F401  (registration)
    autorec,
    bias,
    caser,
    ease,
    ials,
    itemknn,
    mf,
    neumf,
    pop,
    puresvd,
    rp3beta,
)
from orchestrator.models.base import DataSpec, Recommender
from orchestrator.models.registry import create_model, list_models, register_model

__all__ = ["DataSpec", "Recommender", "create_model", "list_models", "register_model"]
