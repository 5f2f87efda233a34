"""The README and docs/ say what the code does: every command in the README parses, every
`make` target it names exists, the pages it links exist, and docs/config.md lists every
config key with its default and help line (`python tests/test_docs.py` rewrites it)."""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys

import pytest
import yaml
from helpers import REPO

from orchestrator.cli import build_parser
from orchestrator.config import DataConfig, SweepConfig, TrainConfig, to_dict

README = (REPO / "README.md").read_text(encoding="utf-8")
CONFIG_PAGE = REPO / "docs" / "config.md"


def readme_commands() -> list[str]:
    """Each `python -m orchestrator ...` of the README's code blocks, inside quotes too
    (`ray exec ... 'cd ~/recsweep && python -m orchestrator sweep ...'`), without comments."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    found = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for match in re.finditer(r"python -m orchestrator\b([^'#\n]*)", line):
                found.append(match.group(1).strip())
    return found


def test_the_readme_has_commands_to_check() -> None:
    commands = readme_commands()
    assert len(commands) >= 15, commands
    assert "sweep --resume runs/overnight" in commands  # the overnight recipe's resume


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command: str) -> None:
    if command in ("--help", ""):
        return  # argparse prints the help and exits 0, checked below
    args = build_parser().parse_args(shlex.split(command))
    assert callable(args.func), command


def test_help_and_a_bad_flag() -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--help"])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as bad:  # the check above can fail
        build_parser().parse_args(["sweep", "--no-such-flag"])
    assert bad.value.code == 2


def test_every_make_target_and_linked_page_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"^make ([\w-]+)", README, re.M))
    assert named and named <= targets, named - targets
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", README)
    assert links and all((REPO / link).is_file() for link in links), links


def test_the_readme_sweep_file_is_a_valid_config() -> None:
    from orchestrator.plan import load_config

    (text,) = re.findall(r"```yaml\n(.*?)```", README, re.S)
    cfg = load_config(None, yaml.safe_load(text))
    assert cfg.time_budget == "8h" and cfg.final_seeds == 3


def config_page() -> str:
    """docs/config.md as the configs' fields make it."""
    sections = [
        ("The sweep (top-level keys)", SweepConfig, ""),
        ("`train:` the training loop", TrainConfig, "train."),
        ("`data:` the dataset", DataConfig, "data."),
    ]
    lines = [
        "# Every config key",
        "",
        "A sweep file's keys, with their defaults; each is also a flag (`--final-seeds 3`) or a",
        "dotted `--set` (`--set train.ks=[5,10]`). Made from the config's own fields",
        "(`orchestrator/config.py`) by `python tests/test_docs.py`; a test checks it is current.",
    ]
    for title, cls, prefix in sections:
        lines += ["", f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
        defaults = to_dict(cls())
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(field.type) or field.name in ("train", "data"):
                continue
            default = yaml.safe_dump(defaults[field.name], default_flow_style=True).strip()
            default = default.removesuffix("\n...").replace("|", "\\|")
            meaning = field.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{prefix}{field.name}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


def test_the_config_page_lists_every_key_as_the_code_has_it() -> None:
    page = CONFIG_PAGE.read_text(encoding="utf-8")
    assert page == config_page(), "docs/config.md is out of date: python tests/test_docs.py"
    assert "| `final_seeds` |" in page and "| `train.refit` |" in page
    assert "| `data.folds` |" in page


if __name__ == "__main__":
    CONFIG_PAGE.write_text(config_page(), encoding="utf-8")
    sys.exit(0)
