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


# --- One writer per output directory ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Writer:
    """A training, or a trainer pod, that writes (or waits to write) one output directory."""

    name: str  # the training's name, as messages show it
    holds: bool  # it has a Job (or a pod that may still run): the directory is its until it ends
    waiting: Waiting | None = None  # not holding: its place in line (None: not in line, e.g. suspended)


def output_holder(me: Waiting, others: Iterable[Writer]) -> Writer | None:
    """Who keeps `me` from taking its output directory (None: it may start now).

    A writer that holds the directory comes first; else the oldest training that waits for the
    same directory and came before `me` (first come, first served, as `admit`), so trainings
    handled in any order still take the directory in creation order.
    """
    others = list(others)
    holder = next((w for w in others if w.holds), None)
    if holder is not None:
        return holder
    earlier = [w for w in others if w.waiting is not None and w.waiting < me]
    return min(earlier, key=lambda w: w.waiting) if earlier else None  # type: ignore[arg-type, return-value]
