"""ARCHITECTURE.md's map of the modules is the code's: every module it names exists, and
every module of the package's folders is in it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("data", "models", "engine", "orchestrator")


def mapped_modules() -> set[str]:
    """`folder/file.py` for each module the map's first code block names."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("## Modules", 1)[1].split("```", 2)[1]
    named, folder = set(), None
    for line in block.splitlines():
        if re.match(r"\S+/\s", line):  # a folder's line: `data/  orchestrator.data ...`
            folder = line.split("/", 1)[0]
        elif line.startswith("  ") and not line.startswith("   ") and folder:
            for word in line.split("  ", 2)[1].split():  # names up to the description
                named.add(f"{folder}/{word}")
    return named


def test_the_module_map_names_every_module_and_only_modules() -> None:
    named = mapped_modules()
    assert {n.split("/")[0] for n in named} == set(FOLDERS)
    on_disk = {
        f"{folder}/{path.name}" for folder in FOLDERS for path in (REPO / folder).glob("*.py")
    }
    assert not named - on_disk, f"named in ARCHITECTURE.md, not on disk: {named - on_disk}"
    assert not on_disk - named, f"on disk, not in ARCHITECTURE.md: {on_disk - named}"
