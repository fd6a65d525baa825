"""Shared fixtures of the packaging tests: real Helm renders of the chart, cached per session."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import helm_env  # noqa: E402
from helm_env import SCENARIOS  # noqa: E402

def helm_available() -> bool:
    return helm_env.HELM_PYTHON.exists()


requires_helm = pytest.mark.skipif(
    not helm_available(),
    reason=f"{helm_env.HELM_PYTHON} missing: `bash scripts/setup` creates it (needs python3.12 from pyenv)",
)


class Renders:
    """Renders each scenario once per session (real Helm, ~0.5 s each)."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self._tmp = tmp
        self._text: dict[str, str] = {}

    def text(self, scenario: str) -> str:
        if scenario not in self._text:
            work = self._tmp / scenario
            work.mkdir(parents=True, exist_ok=True)
            self._text[scenario] = helm_env.render_manifest(work, SCENARIOS[scenario])
        return self._text[scenario]

    def objects(self, scenario: str) -> list[dict[str, Any]]:
        import yaml

        return [doc for doc in yaml.safe_load_all(self.text(scenario)) if doc]


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> Renders:
    if not helm_available():
        pytest.skip(f"{helm_env.HELM_PYTHON} missing: run `bash scripts/setup` (needs python3.12)")
    return Renders(tmp_path_factory.mktemp("helm"))
