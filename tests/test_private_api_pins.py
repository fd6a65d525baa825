"""The code reaches into private APIs of kopf (registry._spawning) and kmock (_handle, _requests,
_payloads, _serve_*): those packages are pinned to the exact versions this suite tests, and the
environment running it has those versions (a drifted venv fails here, by name, not somewhere deep)."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import tomllib

import pytest

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
PINNED = ("kopf", "kmock")


def requirements() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *(r for reqs in extras.values() for r in reqs)]


@pytest.mark.parametrize("package", PINNED)
def test_packages_whose_private_api_we_use_are_pinned_to_the_installed_version(package: str) -> None:
    specs = [r for r in requirements() if re.match(rf"{package}\s*[=<>!~]", r)]
    assert specs, f"{package} is not a requirement in pyproject.toml"
    installed = importlib.metadata.version(package)
    assert specs == [f"{package}=={installed}"] * len(specs), (
        f"{package}: pyproject.toml says {specs}, {installed} is installed; its private API is used "
        "(see the comments at each use): pin the version tested, exactly")
