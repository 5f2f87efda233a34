"""Private interfaces of Ray, Tune and torch live in `orchestrator/internals.py` only, and each
has a fallback (the smoke sweep in test_sweep.py runs with every fallback forced)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import package_modules

from orchestrator import internals

ROOT = Path(__file__).resolve().parents[1]
# an underscore name reached from one of these libraries, or torch's private sparse readers
PRIVATE = re.compile(
    r"\b(?:ray|tune|torch|optuna|wandb)(?:\.\w+)*\._[a-z]\w*"
    r"|\._(?:indices|values)\(|__internal_head__"
)


def test_no_module_but_internals_reaches_a_private_interface() -> None:
    hits = []
    for path in [*package_modules().values(), *sorted(ROOT.glob("bench/*.py"))]:
        if path.name == "internals.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
    assert PRIVATE.search("from torch.onnx._internal import x")  # the scan can find one
    assert PRIVATE.search("grad._indices()[0]")


def test_forced_fallbacks_keep_the_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    head = {"CPU": 2.0, internals.HEAD_RESOURCE: 1.0}
    grad = torch.sparse_coo_tensor(
        torch.tensor([[3, 1, 3]]), torch.ones(3, 2), (5, 2), check_invariants=True
    )
    answers = {}
    for forced in ("0", "1"):
        monkeypatch.setenv(internals.FORCE_FALLBACKS, forced)
        rows, values = internals.coo_entries(grad)
        summed = torch.zeros(5, 2).index_add_(0, rows, values)
        answers[forced] = (internals.is_head_node(head), summed)
        internals.cache_torchlib_ops()  # either way, no error
    assert answers["0"][0] is True and answers["1"][0] is False  # fallback: no head known
    assert torch.equal(answers["0"][1], answers["1"][1])
    assert answers["0"][1][3].tolist() == [2.0, 2.0]  # the repeated row summed
