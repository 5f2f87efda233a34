"""cluster.yaml: accepted by Ray's own autoscaler config validator, installs the project the
way the README does, and holds no credentials. Offline: nothing here talks to a cloud."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
README = ROOT / "README.md"

# Credential-looking text: AWS key names and key ids (AKIA long-term, ASIA temporary), AWS
# account ids (12 digits), private keys, and the usual secret words.
CREDENTIAL_PATTERN = re.compile(
    r"aws_access_key_id|aws_secret_access_key|aws_session_token|\bA[KS]IA[0-9A-Z]{16}\b"
    r"|\b\d{12}\b|BEGIN [A-Z ]*PRIVATE KEY|secret|password|api[_-]?key|gcp_credentials",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict) -> None:
    """What `ray up` does before it touches the cloud: fill in the provider's defaults, then
    check the result against ray/autoscaler/ray-schema.json and Ray's cross-field rules."""
    validate_config(prepare_config(copy.deepcopy(config)))


def commands(lines: list[str]) -> list[list[str]]:
    """Shell lines -> the simple commands in them, tokenised (`a && b; c` -> 3 commands)."""
    out: list[list[str]] = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words as the shell splits them; # starts a comment
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", ";"):
                out += [current] if current else []
                current = []
            else:
                current.append(token)
    return out


def readme_install_commands() -> list[str]:
    """The `pip install` lines of the README's Set-up code block."""
    text = README.read_text()
    section = re.search(r"^## Set-up\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert section, f"{README}: no '## Set-up' section followed by another '## ' section"
    block = re.search(r"```\w*\n(.*?)```", section.group(1), re.DOTALL)
    assert block, f"{README}: the Set-up section has no code block"
    lines = [ln.strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln.startswith("pip install")]


def test_ray_accepts_cluster_yaml(config: dict) -> None:
    ray_validate(config)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(max_worker=4),  # misspelt top-level key
        lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
        lambda c: c.update(head_node_type="no_such_type"),
        lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9),
    ],
    ids=["unknown-key", "missing-resources", "bad-head-type", "min-over-max"],
)
def test_ray_validator_rejects_broken_variants(config: dict, break_it) -> None:
    # The validator really checks this file's shape: small breakages of it are refused.
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(broken)


def test_ray_version_matches_installed_ray(config: dict) -> None:
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:"), image
    tag = image.split(":", 1)[1]
    assert tag.split("-")[0] == ray.__version__, (
        f"{CLUSTER_YAML}: docker.image {image!r} runs a different Ray than the installed "
        f"{ray.__version__}; `ray up` needs them equal"
    )


def test_node_types_cpu_head_gpu_workers_spot_option(config: dict) -> None:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert "InstanceMarketOptions" not in head["node_config"], "the head must be on-demand"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers.values())
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert sum(t["max_workers"] for t in workers.values()) >= 1
    spot = [
        t
        for t in workers.values()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    ]
    assert spot, "no spot GPU worker type"


def test_storage_is_shared_s3(config: dict) -> None:
    env = dict(
        opt.split(" ", 1)[1].split("=", 1)
        for opt in config["docker"]["run_options"]
        if opt.startswith("--env ")
    )
    assert env["RECSWEEP_STORAGE"].startswith("s3://"), env


def test_every_node_uses_ray_token_auth_with_the_users_token(config: dict) -> None:
    # Ray 2.60 enables token authentication by default for local instances only: the cluster
    # turns it on, and every node (the head running the recipe's sweep, and the workers that
    # join it) gets the token file `ray get-auth-token --generate` wrote on the user's machine
    env = dict(
        opt.split(" ", 1)[1].split("=", 1)
        for opt in config["docker"]["run_options"]
        if opt.startswith("--env ")
    )
    assert env["RAY_AUTH_MODE"] == "token"
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    readme = README.read_text(encoding="utf-8")
    assert "ray get-auth-token --generate" in readme


def test_setup_commands_install_as_the_readme_does(config: dict) -> None:
    readme = readme_install_commands()
    assert any("-e" in cmd for cmd in commands(readme)), f"{README}: no `pip install -e` line"
    setup = commands(config["setup_commands"])
    for line in readme:
        for cmd in commands([line]):
            assert cmd in setup, f"{README} installs with {line!r}; cluster.yaml does not"
    # The editable install runs in the synced project folder.
    (remote,) = [r for r, local in config["file_mounts"].items() if local == "."]
    editable = [ln for ln in config["setup_commands"] if "-e" in shlex.split(ln)]
    assert editable and all(shlex.split(ln)[:2] == ["cd", remote] for ln in editable), editable


def test_no_credentials_in_cluster_yaml() -> None:
    hits = [
        f"line {n}: {m.group(0)}"
        for n, line in enumerate(CLUSTER_YAML.read_text().splitlines(), 1)
        for m in CREDENTIAL_PATTERN.finditer(line)
    ]
    assert not hits, f"{CLUSTER_YAML}: credential-looking text {hits}"


@pytest.mark.parametrize(
    "text",
    [
        "aws_access_key_id: x",
        "AKIA" + "IOSFODNN7EXAMPLE",  # AWS's documented example key id, split to stay unmatched
        "arn:aws:iam::" + "123456789012:instance-profile/ray-autoscaler-v1",
        "-----BEGIN RSA PRIVATE KEY-----",
        "WANDB_API_KEY=abc",
    ],
)
def test_credential_pattern_catches(text: str) -> None:
    assert CREDENTIAL_PATTERN.search(text)


def test_make_sets_up_as_the_readme_does_and_ci_runs_make_test() -> None:
    # The README opens with `make sweep` and `make test`; the Makefile's set-up installs with
    # the README's own lines, and CI runs the README's test command
    text = README.read_text(encoding="utf-8")
    first = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert first and [ln.split("#")[0].strip() for ln in first.group(1).splitlines()] == [
        "make sweep",
        "make test",
    ]
    makefile = (ROOT / "Makefile").read_text().replace(" -q", "")  # quiet, the same install
    for line in readme_install_commands():
        cmd = line.split("#")[0].strip()
        # the line itself, or followed by the one-line reason it failed (`|| { ... }`)
        assert re.search(rf"\$\(BIN\)/python -m {re.escape(cmd)}( \|\||\n)", makefile), line
    assert "make test" in (ROOT / ".ci" / "run").read_text()
