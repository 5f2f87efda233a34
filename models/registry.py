"""Models by name: `register_model`, `create_model`, `list_models` (timm's registry, strict).

The registered name is the module's file name; registering a name twice raises.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from orchestrator.data.files import atomic_write
from orchestrator.models.base import TASKS, CommonParams, DataSpec, Recommender

_MODELS: dict[str, type[Recommender]] = {}


def register_model(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator: add a model under `cls.name`, which must equal its module's name."""
    module_name = cls.__module__.rsplit(".", 1)[-1]
    if cls.name != module_name:
        raise ValueError(
            f"model {cls.__name__}: name {cls.name!r} must equal its file name {module_name!r}"
        )
    if cls.name in _MODELS:
        raise ValueError(f"model {cls.name!r} is already registered")
    bad = [t for t in cls.tasks if t not in TASKS]
    if bad:
        raise ValueError(f"model {cls.name!r}: unknown task(s) {bad}; known: {list(TASKS)}")
    _check_recipes(cls)
    _MODELS[cls.name] = cls
    return cls


def _check_recipes(cls: type[Recommender]) -> None:
    """Each recipe names a task of the model and only its hyperparameters, with values its
    `Params` accept (that they lie in the search space is checked where spaces are run:
    the registry's tests and the sweep's config check)."""
    names = [r.name for r in cls.recipes]
    if len(set(names)) != len(names):
        raise ValueError(f"model {cls.name!r}: recipe names {names} repeat")
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    for r in cls.recipes:
        where = f"model {cls.name!r}, recipe {r.name!r}"
        if r.task not in cls.tasks:
            raise ValueError(f"{where}: task {r.task!r}; the model's tasks: {cls.tasks}")
        unknown = sorted(set(r.hparams) - fields)
        if unknown or "epochs" in r.hparams:
            raise ValueError(
                f"{where}: unknown hyperparameter(s) {unknown or ['epochs']} "
                f"(a recipe's epochs are its `epochs`); allowed: "
                f"{', '.join(sorted(fields - {'epochs'}))}"
            )
        if r.epochs < 1:
            raise ValueError(f"{where}: epochs={r.epochs}; expected an int >= 1")
        try:
            cls.Params(**{**cls.Params.task_defaults.get(r.task, {}), **r.hparams})
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_model_class(name: str) -> type[Recommender]:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def _coerce(cls_name: str, f: dataclasses.Field, value: Any, hints: dict) -> Any:
    """Accept `--set dim=32` strings and YAML values; reject what cannot be the field's type."""
    kind = hints[f.name]
    if isinstance(value, str) and kind is not str:
        try:
            value = (
                {"True": True, "true": True, "False": False, "false": False}[value]
                if kind is bool
                else kind(value)
            )
        except (ValueError, KeyError):
            raise ValueError(
                f"hyperparameter {f.name}={value!r} of model {cls_name!r}: expected {kind.__name__}"
            ) from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(
            f"hyperparameter {f.name}={value!r} of model {cls_name!r}: "
            f"expected {kind.__name__}, got {type(value).__name__}"
        )
    return value


def param_types(name: str) -> dict[str, type]:
    """Each hyperparameter of model `name` and its type (int, float, bool, str)."""
    params = get_model_class(name).Params
    hints = typing.get_type_hints(params)
    return {f.name: hints[f.name] for f in dataclasses.fields(params)}


def make_params(name: str, task: str | None = None, **hparams: Any) -> CommonParams:
    """The model's `Params` with `hparams` applied, type-checked and range-checked.

    Defaults that differ by task come from `Params.task_defaults[task]`; `hparams` win.
    """
    cls = get_model_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(hparams) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for model {name!r}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls.Params)
    values = {k: _coerce(name, fields[k], v, hints) for k, v in hparams.items()}
    defaults = cls.Params.task_defaults.get(task or cls.tasks[0], {})
    return cls.Params(**{**defaults, **values})


def create_model(name: str, spec: DataSpec, task: str | None = None, **hparams: Any) -> Recommender:
    """Build a registered model.

    Args:
        name: a name from `list_models()`.
        spec: the data spec.
        task: one of the model's tasks; its first task when None.
        **hparams: overrides of the model's `Params` defaults.

    Example:
        >>> model = create_model("mf", DataSpec(943, 1682), task="rating", dim=32)
        >>> model.name, model.task, model.params.dim
        ('mf', 'rating', 32)
    """
    cls = get_model_class(name)
    task = task or cls.tasks[0]
    if task not in cls.tasks:
        raise ValueError(
            f"model {name!r} does not support task {task!r}; it supports: {', '.join(cls.tasks)}"
        )
    return cls(spec, task, make_params(name, task, **hparams))


def save_model(model: Recommender, path: str | Path, **meta: Any) -> None:
    """Write a checkpoint that `load_model` rebuilds without the training code or data.

    Args:
        model: the trained model (its current weights are saved).
        path: the `.pt` file to write (written to a temporary name, then renamed).
        **meta: JSON-able extras kept beside the weights (metrics, data fingerprint, ...).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.name,
        "task": model.task,
        "hparams": model.hparams(),
        "spec": dataclasses.asdict(model.spec),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_model(path: str | Path) -> tuple[Recommender, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, meta).

    Raises a ValueError naming the file when it is not such a checkpoint or its weights do
    not match the model it names.
    """
    import torch

    path = Path(path)
    try:
        # weights_only: tensors and plain containers only, so a crafted file runs no code
        payload = torch.load(path, map_location="cpu", weights_only=True)
        name, task, hparams = payload["model"], payload["task"], payload["hparams"]
        spec = payload["spec"]
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a recsweep checkpoint ({e})") from None
    status = payload.get("meta", {}).get("metrics", {}).get("status")
    if status == "diverged":
        raise ValueError(
            f"{path}: the checkpoint of a diverged model (status 'diverged'); train it again"
        )
    spec["rating_range"] = tuple(spec["rating_range"])
    model = create_model(name, DataSpec(**spec), task, **hparams)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not match model {name!r}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval(), payload.get("meta", {})
