"""Recommender models by name. Importing this package registers every model."""

from orchestrator.models import autorec, bias, caser, itemknn, mf, neumf, pop  # noqa: F401  (registration)
from orchestrator.models.base import DataSpec, Recommender
from orchestrator.models.registry import create_model, list_models, register_model

__all__ = ["DataSpec", "Recommender", "create_model", "list_models", "register_model"]
