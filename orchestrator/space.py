"""Search-space overrides in the W&B sweep-file syntax, applied over a model's own space.

A model's `search_space(trial)` is Optuna define-by-run code. A sweep file may replace
any parameter's distribution (or fix it), using the parameter syntax W&B sweep files use:

    mf:
      dim: {values: [32, 64, 128]}
      lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
      epochs: {value: 20}

`overriding(trial, overrides)` wraps the trial so that the model's own `suggest_*` call for
an overridden name draws from the override instead; overridden names the model never
suggests are drawn afterwards. No Optuna import here: only the trial's `suggest_*` methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:  # the models' trial protocol; at run time space.py imports no model code
    from orchestrator.models.base import Choice, Trial

Space = Callable[["Trial"], "dict[str, Any] | None"]
"""A model's define-by-run space with its task bound: the hyperparameters it draws."""

DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
)
KEYS = {"distribution", "min", "max", "values", "value", "q"}


def validate_space(
    overrides: dict[str, Any],
    known_params: dict[str, dict[str, type]],
    check: Callable[[str, str, Any], object] | None = None,
) -> None:
    """Check every override before any trial starts; errors name `model.param.key`.

    Args:
        overrides: `{model: {param: spec}}` as read from the sweep file.
        known_params: each model's hyperparameters and their types: a value of another type
            (a string for an int, a float bound of an int) is an error, and an int, bool or
            str parameter takes only fixed values, lists of values or (int) int_uniform.
        check: `check(model, param, value)` raises a ValueError for a value the model
            refuses (its range checks), called with every value and bound.
    """
    for model, params in overrides.items():
        if model not in known_params:
            raise ValueError(
                f"search_space.{model}: not a model of this sweep; "
                f"models: {', '.join(known_params)}"
            )
        if not isinstance(params, dict):
            raise ValueError(f"search_space.{model}: expected a mapping of parameters")
        for name, spec in params.items():
            where = f"search_space.{model}.{name}"
            if name not in known_params[model]:
                raise ValueError(
                    f"{where}: model {model!r} has no hyperparameter {name!r}; "
                    f"allowed: {', '.join(known_params[model])}"
                )
            kind, typ = _kind(where, spec), known_params[model][name]
            discrete = ("constant", "categorical") + (("int_uniform",) if typ is int else ())
            if typ is not float and kind not in discrete:
                raise ValueError(
                    f"{where}: {name} is {typ.__name__}; expected "
                    f"{{value: ...}}, {{values: [...]}}"
                    + (" or {min: 1, max: 8}" if typ is int else "")
                    + f", got distribution {kind}"
                )
            values = (
                [spec["value"]]
                if kind == "constant"
                else spec["values"]
                if kind == "categorical"
                else [spec["min"], spec["max"]]
            )
            for value in values:
                fits = isinstance(value, typ) or (typ is float and isinstance(value, int))
                if not fits or (typ is not bool and isinstance(value, bool)):
                    raise ValueError(
                        f"{where}: {value!r} is not {typ.__name__}, the type of {model}'s {name}"
                    )
                if check is not None:
                    try:
                        check(model, name, value)
                    except ValueError as e:
                        raise ValueError(f"{where}: {e}") from None


def _is_number(v: object) -> TypeGuard[int | float]:
    """An int or a float, not a bool (YAML's `true` is no bound)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(where: str, spec: object) -> str:
    """The distribution of one entry (inferred as W&B does when not given); raises if bad."""
    if not isinstance(spec, dict):
        raise ValueError(
            f"{where}: expected a mapping like {{min: 1, max: 8}} or "
            f"{{values: [...]}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(KEYS))}")
    kind = spec.get("distribution")
    if kind is None:
        if "value" in spec:
            kind = "constant"
        elif "values" in spec:
            kind = "categorical"
        elif isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
            kind = "int_uniform"
        else:
            kind = "uniform"
    if kind not in DISTRIBUTIONS:
        raise ValueError(
            f"{where}.distribution: {kind!r} is not supported; "
            f"supported: {', '.join(DISTRIBUTIONS)}"
        )
    if kind == "constant" and "value" not in spec:
        raise ValueError(f"{where}: distribution constant needs 'value'")
    if kind == "categorical" and not (isinstance(spec.get("values"), list) and spec["values"]):
        raise ValueError(f"{where}: distribution categorical needs a non-empty list 'values'")
    if kind not in ("constant", "categorical"):
        lo, hi = spec.get("min"), spec.get("max")
        if not (_is_number(lo) and _is_number(hi)):
            raise ValueError(
                f"{where}: distribution {kind} needs numeric 'min' and 'max', "
                f"got min={lo!r} max={hi!r}"
            )
        if lo > hi:
            raise ValueError(f"{where}: min={lo} is greater than max={hi}")
        if "log" in kind and lo <= 0:
            raise ValueError(f"{where}: {kind} needs min > 0, got min={lo}")
        if kind.startswith("q_") and not spec.get("q", 1) > 0:
            raise ValueError(f"{where}: q must be > 0, got {spec['q']!r}")
    return kind


def suggest(trial: Trial, name: str, spec: dict[str, Any]) -> Choice:
    """Draw one overridden parameter with the trial's own `suggest_*` methods."""
    kind = _kind(name, spec)
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["values"])
    lo, hi = spec["min"], spec["max"]
    if kind == "int_uniform":
        return trial.suggest_int(name, int(lo), int(hi))
    log = "log" in kind
    step = spec.get("q", 1) if kind.startswith("q_") else None
    if step is not None and log:  # Optuna cannot combine step and log: quantise the draw
        value = trial.suggest_float(name, lo, hi, log=True)
        return round(value / step) * step
    return trial.suggest_float(name, lo, hi, log=log, step=step)


class _Overriding:
    """A trial whose `suggest_*(name, ...)` answers from the overrides when it has `name`."""

    def __init__(self, trial: Trial, overrides: dict[str, Any]) -> None:
        self._trial, self._overrides = trial, overrides
        self.drawn: dict[str, Choice] = {}

    def _answer(self, name: str, draw: Callable[[], Choice]) -> Any:
        # Any: an override's value is the sweep file's, of the type validate_space checked
        # it against (the parameter's), which a suggest_* method's return type cannot say
        value = (
            suggest(self._trial, name, self._overrides[name]) if name in self._overrides else draw()
        )
        self.drawn[name] = value
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._answer(
            name, lambda: self._trial.suggest_float(name, low, high, step=step, log=log)
        )

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._answer(
            name, lambda: self._trial.suggest_int(name, low, high, step=step, log=log)
        )

    def suggest_categorical(self, name: str, choices: Sequence[Choice]) -> Choice:
        return self._answer(name, lambda: self._trial.suggest_categorical(name, choices))


def sample_params(trial: Trial, model_space: Space, overrides: dict[str, Any]) -> dict[str, Any]:
    """The model's define-by-run space with `overrides` applied; returns the hyperparameters."""
    wrapped = _Overriding(trial, overrides)
    params = dict(model_space(wrapped) or {})
    for name, spec in overrides.items():
        if name not in wrapped.drawn:
            params[name] = suggest(trial, name, spec)
        else:
            params[name] = wrapped.drawn[name]
    return params


class _Defaults:
    """A trial that answers each `suggest_*` with the model's default and keeps the defaults
    that lie in the distribution asked for (the ones Optuna can enqueue as fixed values)."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.point: dict[str, Any] = {}

    def _take(self, name: str, inside: bool) -> None:
        if inside:
            self.point[name] = self.defaults[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        v = self.defaults.get(name)
        self._take(
            name,
            _is_number(v)
            and low <= v <= high
            and (step is None or abs((v - low) / step - round((v - low) / step)) < 1e-9),
        )
        return low if v is None else v  # the lower bound for a draw with no default

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        v = self.defaults.get(name)
        self._take(name, isinstance(v, int) and low <= v <= high and (v - low) % step == 0)
        return low if v is None else v

    def suggest_categorical(self, name: str, choices: Sequence[Choice]) -> Choice:
        v = self.defaults.get(name)
        self._take(name, name in self.defaults and v in list(choices))
        return v


def default_point(
    model_space: Space, overrides: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """The hyperparameter values of `defaults` that the space (the model's, with
    `overrides`) can draw: `{name: value}` to enqueue as a study's first trial. A default
    outside an overridden range is left to the sampler."""
    trial = _Defaults(defaults)
    sample_params(trial, model_space, overrides)
    return trial.point


def start_points(
    model_space: Space,
    overrides: dict[str, Any],
    defaults: dict[str, Any],
    recipes: list[tuple[str, dict[str, Any]]],
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, list[str]]]:
    """A study's first trials, each with its origin: `defaults`, then `recipe:<name>` for
    each recipe (its values over the defaults) that the space with `overrides` can draw
    whole; and, for each recipe it leaves out, one line saying why: `outside` the space, or
    `same` as a point already tried (`{"outside": [lines], "same": [lines]}`).

    Example:
        >>> space = lambda t: {"lr": t.suggest_float("lr", 1e-4, 1e-1, log=True)}
        >>> points, dropped = start_points(space, {}, {"lr": 1e-3},
        ...                                [("fast", {"lr": 0.05}), ("slow", {"lr": 1.0})])
        >>> points
        [('defaults', {'lr': 0.001}), ('recipe:fast', {'lr': 0.05})]
        >>> dropped
        {'outside': ['recipe slow: lr=1.0 is outside the search space; not tried'], 'same': []}
    """
    points = [("defaults", default_point(model_space, overrides, defaults))]
    dropped: dict[str, list[str]] = {"outside": [], "same": []}
    for name, hparams in recipes:
        point = default_point(model_space, overrides, {**defaults, **hparams})
        # what the trial would get: the point, and the constants it is never asked for
        got = {
            **{k: spec["value"] for k, spec in overrides.items() if _kind(k, spec) == "constant"},
            **point,
        }
        outside = [f"{k}={v!r}" for k, v in hparams.items() if k not in got or got[k] != v]
        same = [origin for origin, p in points if p == point]
        if outside:
            dropped["outside"].append(
                f"recipe {name}: {', '.join(outside)} "
                f"{'is' if len(outside) == 1 else 'are'} outside the search space; "
                "not tried"
            )
        elif same:
            dropped["same"].append(f"recipe {name}: the same trial as {same[0]}; tried once")
        else:
            points.append((f"recipe:{name}", point))
    return points, dropped


class _Recorder:
    """A trial that writes down each distribution asked of it and answers with its first
    value (the lower bound, the first choice)."""

    def __init__(self) -> None:
        self.space: dict[str, dict[str, Any]] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        self.space[name] = {
            "type": "float",
            "low": low,
            "high": high,
            "log": log,
            **({"step": step} if step else {}),
        }
        return low

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.space[name] = {
            "type": "int",
            "low": low,
            "high": high,
            "log": log,
            **({"step": step} if step != 1 else {}),
        }
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Choice]) -> Choice:
        self.space[name] = {"choices": list(choices)}
        return list(choices)[0]


def describe_space(model_space: Space) -> dict[str, dict[str, Any]]:
    """Each parameter a define-by-run space draws, with its distribution (`models`).

    Example:
        >>> describe_space(lambda t: {"dim": t.suggest_categorical("dim", [8, 16]),
        ...                           "lr": t.suggest_float("lr", 1e-4, 1e-2, log=True)})
        {'dim': {'choices': [8, 16]}, 'lr': {'type': 'float', 'low': 0.0001, 'high': 0.01, \
'log': True}}
    """
    trial = _Recorder()
    model_space(trial)
    return trial.space
