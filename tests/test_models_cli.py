"""`python -m orchestrator models`: every model with its defaults, space and recipes."""

from __future__ import annotations

import dataclasses
import json

from orchestrator.cli import main
from orchestrator.models.registry import get_model_class, list_models


def test_models_lists_every_model_with_its_recipes_and_their_sources(capsys) -> None:
    assert main(["models", "--json"]) == 0
    cards = {c["name"]: c for c in json.loads(capsys.readouterr().out)["models"]}
    assert sorted(cards) == list_models()
    mf = cards["mf"]
    assert mf["tasks"] == ["rating", "ranking"]
    assert mf["defaults"]["ranking"]["reg"] == 0.003  # per-task defaults
    assert mf["search_space"]["ranking"]["loss"] == {"choices": ["bpr", "bce"]}
    assert mf["search_space"]["ranking"]["negatives"] == {
        "type": "int",
        "low": 1,
        "high": 16,
        "log": True,
    }
    assert "loss" not in mf["search_space"]["rating"]
    for name, card in cards.items():
        want = [dataclasses.asdict(r) for r in get_model_class(name).recipes]
        assert card["recipes"] == want
    assert cards["pop"]["recipes"] == [] and not cards["pop"]["learned"]

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for name in list_models():
        assert f"\n{name} (" in "\n" + text
    rendle = get_model_class("mf").recipes[-1]
    assert f"recipe {rendle.name} (ranking, 256 epochs)" in text
    assert f"source: {rendle.source}" in text and f"adapted: {rendle.note}" in text
