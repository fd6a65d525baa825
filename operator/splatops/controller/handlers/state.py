"""The operator's in-memory state shared by the handlers (one instance per operator process).

Only bookkeeping that the cluster cannot tell us fast enough lives here: what we last wrote
(kopf's index lags our own writes by one watch event), Jobs we just admitted, throttle clocks.
Everything else is read from kopf's indices, which kopf fills before any handler runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Iterable, Mapping

from splatops.controller.kube import Kube
from splatops.controller.settings import Settings

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass
class Runtime:
    settings: Settings
    kube: Kube | None = None
    admission_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    admitted: set[Key] = dataclasses.field(default_factory=set)  # training keys
    written: dict[Key, dict[str, Any]] = dataclasses.field(default_factory=dict)
    last_progress_write: dict[Key, float] = dataclasses.field(default_factory=dict)
    last_progress_step: dict[Key, int] = dataclasses.field(default_factory=dict)
    job_owner: dict[Key, str] = dataclasses.field(default_factory=dict)  # (ns, job) -> training
    _locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)

    def lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        for table in (self.written, self.last_progress_write, self.last_progress_step, self._locks):
            table.pop(key, None)  # type: ignore[attr-defined]
        self.admitted.discard(key)

    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the Kubernetes client is not connected yet (startup handler has not run)")
        return self.kube


def latest(store: Iterable[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    """The one value a kopf index Store holds for a single-object key (None if empty)."""
    value = None
    for value in store or ():
        pass
    return value
