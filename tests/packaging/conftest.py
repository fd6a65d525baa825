"""Shared fixtures of the packaging tests: real Helm renders of the chart, cached per session."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import helm_env  # noqa: E402
from helm_env import SCENARIOS  # noqa: E402

helm_available = helm_env.helm_available
requires_helm = pytest.mark.skipif(not helm_available(), reason=helm_env.UNAVAILABLE)


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
        pytest.skip(helm_env.UNAVAILABLE)
    return Renders(tmp_path_factory.mktemp("helm"))
