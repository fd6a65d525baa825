"""First-come-first-served admission under the operator's cap. Pure."""

from __future__ import annotations

import dataclasses
from typing import Iterable


@dataclasses.dataclass(frozen=True, order=True)
class Waiting:
    created: str  # metadata.creationTimestamp (RFC 3339 sorts chronologically)
    namespace: str
    name: str


def admit(running: int, waiting: Iterable[Waiting], cap: int) -> list[Waiting]:
    """Which waiting trainings to start now: the oldest ones, up to the free slots (cap 0 = no cap)."""
    ordered = sorted(waiting)
    if cap <= 0:
        return ordered
    free = max(0, cap - running)
    return ordered[:free]
