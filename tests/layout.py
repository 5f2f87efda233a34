"""The package's modules as they lie on disk, for the tests that read source files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "orchestrator"


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
