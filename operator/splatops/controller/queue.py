"""First-come-first-served admission under the operator's cap. Pure."""

from __future__ import annotations

import dataclasses
from typing import Iterable


@dataclasses.dataclass(frozen=True, order=True)
class Waiting:
    """A training waiting for a slot; sorts first come first served.

    creationTimestamp has one-second resolution, so trainings created in the same second are
    ordered by when the operator first saw them (a counter over its watch stream, which delivers
    creations in order; after an operator restart, the order of its initial listing).
    """

    created: str  # metadata.creationTimestamp (RFC 3339 sorts chronologically)
    seen: int  # the operator's first-seen counter
    namespace: str
    name: str
    has_job: bool = dataclasses.field(default=True, compare=False)  # False: not handled yet, no Job to unsuspend


def admit(running: int, waiting: Iterable[Waiting], cap: int) -> list[Waiting]:
    """Which waiting trainings to start now: the oldest ones, up to the free slots (cap 0 = no cap)."""
    ordered = sorted(waiting)
    if cap <= 0:
        return ordered
    free = max(0, cap - running)
    return ordered[:free]
