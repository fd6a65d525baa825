"""First-come-first-served admission under the operator's cap. Pure."""

from __future__ import annotations

import dataclasses
from typing import AbstractSet, Iterable

from splatops.api.models import Phase

Key = tuple[str, str]  # (namespace, training name)
TERMINAL = tuple(p.value for p in Phase if p.terminal)  # Succeeded, Failed


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


@dataclasses.dataclass(frozen=True)
class SlotJob:
    """A training's Job as kopf's index shows it."""

    training: Key
    suspended: bool = False
    finished: bool = False
    kueue: bool = False  # Kueue admits it (queue-name label), never the operator's cap


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A training that may be waiting for a slot."""

    place: Waiting  # its place in line (has_job is decided here)
    phase: str | None = None  # its current status.phase (None: not handled yet)
    held: bool = False  # spec.suspend, Kueue's (spec.queueName), or an invalid spec: never admitted here
    job_suspended: bool | None = None  # spec.suspend of its own Job; None: it has no Job


@dataclasses.dataclass(frozen=True)
class Slots:
    running: int  # Jobs under the cap that run (or that we just admitted)
    waiting: list[Waiting]  # trainings waiting for a slot
    settled: frozenset[Key]  # admitted trainings whose Job the index now shows running or finished


def slots(jobs: Iterable[SlotJob], candidates: Iterable[Candidate], admitted: AbstractSet[Key]) -> Slots:
    """Count the slots in use and the trainings waiting for one.

    `admitted`: trainings whose Job we unsuspended or created running, which the index may not
    show yet; they count as running until it does (then they are `settled`). The waiting include
    trainings not handled yet (no Job, no phase; `has_job=False`): kopf may run the creation of
    trainings created together in any order, so the one handled first must not take a slot from
    one created before it. Their slots stay reserved for their own creation.
    """
    running, seen, settled = 0, set(), set()
    for job in jobs:
        seen.add(job.training)
        if job.kueue:
            continue
        if job.finished or not job.suspended:
            settled.add(job.training)
            running += 0 if job.finished else 1
        elif job.training in admitted:
            running += 1  # we just admitted it; the watch has not caught up
    running += len(admitted - seen)  # created unsuspended, not yet seen
    still = admitted - settled
    waiting = []
    for c in candidates:
        key = (c.place.namespace, c.place.name)
        if key in still or c.held or c.phase in TERMINAL or c.job_suspended is False:
            continue
        if c.job_suspended is None and c.phase is not None:
            continue  # handled, yet no Job: it waits for something else (OutputBusy, a retry)
        waiting.append(dataclasses.replace(c.place, has_job=c.job_suspended is not None))
    return Slots(running, waiting, frozenset(settled))


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
