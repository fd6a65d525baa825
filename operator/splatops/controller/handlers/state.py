"""The operator's in-memory state shared by the handlers (one instance per operator process).

Only bookkeeping that the cluster cannot tell us fast enough lives here: what we last wrote
(kopf's index lags our own writes by one watch event; forgotten as soon as the index shows it),
Jobs we just admitted, the order trainings were first seen in, throttle clocks. Everything else is
read from kopf's indices, which kopf fills before any handler runs.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import time
from typing import Any, Iterable, Iterator, Mapping

import kopf

from splatops import names
from splatops.api import layout
from splatops.api.layout import OutputKey, OutputLocation
from splatops.api.models import Phase
from splatops.kubeapi import Kube
from splatops.controller.metrics import OperatorMetrics
from splatops.controller.settings import Settings

Key = tuple[str, str]  # (namespace, name)
GST = (names.GROUP, names.VERSION, names.PLURAL)
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# The ids of kopf's indices: kopf passes each index to every handler as a keyword of this name.
GST_INDEX, JOB_INDEX, POD_INDEX = "gst_index", "job_index", "pod_index"
# A written status the index has not shown within this many seconds is no longer trusted over the
# live one (someone else wrote since, e.g. the other replica while this one was paused).
WRITTEN_MAX_AGE = 60.0


@dataclasses.dataclass
class Runtime:
    settings: Settings
    kube: Kube | None = None
    metrics: OperatorMetrics = dataclasses.field(default_factory=OperatorMetrics)  # this run's per-training series
    admission_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    admitted: set[Key] = dataclasses.field(default_factory=set)  # training keys
    written: dict[Key, dict[str, Any]] = dataclasses.field(default_factory=dict)  # status fields not yet in the index
    written_at: dict[Key, float] = dataclasses.field(default_factory=dict)  # monotonic time of the last write
    seen: dict[Key, int] = dataclasses.field(default_factory=dict)  # first-seen order (FCFS tie-break)
    last_progress_write: dict[Key, float] = dataclasses.field(default_factory=dict)
    last_progress_step: dict[Key, int | str] = dataclasses.field(default_factory=dict)
    job_owner: dict[Key, str] = dataclasses.field(default_factory=dict)  # (ns, job) -> training
    warned: set[str] = dataclasses.field(default_factory=set)  # once-per-process warnings given
    job_created: set[Key] = dataclasses.field(default_factory=set)  # trainings whose Job we created or adopted
    locations: dict[Key, tuple[Any, OutputLocation | None]] = dataclasses.field(default_factory=dict)  # ((uid, generation), where)
    outputs: Outputs = dataclasses.field(default_factory=lambda: Outputs())  # who writes which output directory
    suspend_seen: dict[Key, bool] = dataclasses.field(default_factory=dict)  # spec.suspend last acted on
    pvc_seen: dict[Key, float] = dataclasses.field(default_factory=dict)  # (ns, claim) -> monotonic time
    job_blocked: dict[Key, tuple[str, str]] = dataclasses.field(default_factory=dict)  # why no Job yet: (reason, message)
    kueue_seen: dict[Key, tuple[float, str | None]] = dataclasses.field(default_factory=dict)  # (monotonic time, Kueue's message)
    retired_jobs: set[str] = dataclasses.field(default_factory=set)  # uids of Jobs we deleted (OOM retries)
    _locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    _seen_counter: Iterator[int] = dataclasses.field(default_factory=itertools.count)

    def lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        for table in (self.written, self.written_at, self.seen, self.last_progress_write, self.last_progress_step,
                      self.suspend_seen, self.locations, self.job_blocked, self.kueue_seen, self._locks):
            table.pop(key, None)  # type: ignore[attr-defined]
        self.outputs.forget(key)
        self.admitted.discard(key)
        self.job_created.discard(key)

    def retired(self, job: Mapping[str, Any] | None) -> bool:
        """A Job on its way out: marked deleting, or deleted by us before the index shows it."""
        if job is None:
            return False
        meta = job.get("metadata") or {}
        return bool(meta.get("deletionTimestamp")) or meta.get("uid") in self.retired_jobs

    def first_seen(self, key: Key) -> int:
        """The order in which the operator first saw this training (for FCFS among equal timestamps)."""
        if key not in self.seen:
            self.seen[key] = next(self._seen_counter)
        return self.seen[key]

    def location(self, key: Key, training: Mapping[str, Any]) -> OutputLocation | None:
        """Where the training writes (None if its spec is invalid), parsed once per generation
        (reconcile runs on every event; a pydantic parse each time was ~5 % of the operator's CPU
        in a burst). Also files the training under its output directory."""
        meta = training.get("metadata") or {}
        version = (meta.get("uid"), meta.get("generation"))
        cached = self.locations.get(key)
        if cached is None or cached[0] != version:
            cached = self.locations[key] = (version, layout.location_of(training))
            self.outputs.file(key, cached[1].key(key[0]) if cached[1] is not None else None)
        return cached[1]

    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the Kubernetes client is not connected yet (startup handler has not run)")
        return self.kube

    def current_status(self, key: Key, training: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
        """The resource's status as we last wrote it (the index may not have seen our write yet)."""
        self._expire(key, time.monotonic() if now is None else now)
        return {**(training.get("status") or {}), **self.written.get(key, {})}

    def remember(self, key: Key, patch: Mapping[str, Any], now: float | None = None) -> None:
        self.written[key] = {**self.written.get(key, {}), **patch}
        self.written_at[key] = time.monotonic() if now is None else now

    def observed(self, key: Key, status: Mapping[str, Any] | None, now: float | None = None) -> None:
        """The index received the resource with `status`: forget the written fields it shows.

        The cache only bridges the watch lag. Kept longer, it would override the live status
        after another replica (peering failover) or anyone else wrote it: duplicate phase-change
        Events and metrics, or writes skipped because the stale cache already "has" them.
        """
        entry = self.written.get(key)
        if entry is None:
            return
        live = status or {}
        left = {k: v for k, v in entry.items() if not contains(live.get(k), v)}
        if left:
            self.written[key] = left
            self._expire(key, time.monotonic() if now is None else now)
        else:
            self.written.pop(key, None)
            self.written_at.pop(key, None)

    def _expire(self, key: Key, now: float) -> None:
        if key in self.written and now - self.written_at.get(key, now) > WRITTEN_MAX_AGE:
            self.written.pop(key, None)
            self.written_at.pop(key, None)


@dataclasses.dataclass(frozen=True)
class Blocked:
    """A training held back because another one writes its output directory."""

    holder: str  # the training that keeps it waiting
    message: str


@dataclasses.dataclass
class Outputs:
    """Output directories and who writes them: trainings by their spec, and trainer pods that may
    still run after their training ended or was deleted (a pod terminating on SIGTERM)."""

    trainings: dict[OutputKey, set[Key]] = dataclasses.field(default_factory=dict)
    of: dict[Key, OutputKey] = dataclasses.field(default_factory=dict)
    pods: dict[OutputKey, dict[Key, tuple[str, str]]] = dataclasses.field(default_factory=dict)  # (ns, pod) -> (training, Job)
    pod_output: dict[Key, OutputKey] = dataclasses.field(default_factory=dict)
    blocked: dict[Key, Blocked] = dataclasses.field(default_factory=dict)
    locks: dict[OutputKey, asyncio.Lock] = dataclasses.field(default_factory=dict)

    def file(self, key: Key, output: OutputKey | None) -> None:
        self.forget(key, keep_blocked=True)
        if output is not None:
            self.of[key] = output
            self.trainings.setdefault(output, set()).add(key)

    def forget(self, key: Key, keep_blocked: bool = False) -> None:
        output = self.of.pop(key, None)
        if output is not None:
            members = self.trainings.get(output, set())
            members.discard(key)
            if not members:
                self.trainings.pop(output, None)
        if not keep_blocked:
            self.blocked.pop(key, None)

    def pod(self, pod: Key, output: OutputKey | None, owner: tuple[str, str], live: bool) -> None:
        """Record a trainer pod's output while it may still write (`live`), forget it after.
        `owner`: (training name, Job name)."""
        old = self.pod_output.pop(pod, None)
        if old is not None:
            self.pods.get(old, {}).pop(pod, None)
            if not self.pods.get(old):
                self.pods.pop(old, None)
        if output is not None and live:
            self.pod_output[pod] = output
            self.pods.setdefault(output, {})[pod] = owner

    def lock(self, output: OutputKey) -> asyncio.Lock:
        return self.locks.setdefault(output, asyncio.Lock())


@dataclasses.dataclass(frozen=True)
class Indices:
    """kopf's three indices, keyed (namespace, name) of the training, the Job, and the pods' Job."""

    gsts: kopf.Index
    jobs: kopf.Index
    pods: kopf.Index

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indices:
        return cls(kwargs[GST_INDEX], kwargs[JOB_INDEX], kwargs[POD_INDEX])

    def training(self, key: Key) -> dict[str, Any] | None:
        snap = latest(self.gsts.get(key))
        return dict(snap) if snap is not None else None

    def job(self, namespace: str, job_name: str) -> Mapping[str, Any] | None:
        return latest(self.jobs.get((namespace, job_name)))

    def job_pods(self, namespace: str, job_name: str) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.pods.get((namespace, job_name), ()))


def contains(live: Any, written: Any) -> bool:
    """Whether `live` shows what a JSON merge patch `written` set (objects merge, the rest replace)."""
    if isinstance(written, Mapping):
        return isinstance(live, Mapping) and all(contains(live.get(k), v) for k, v in written.items())
    if written is None:  # a merge patch's null removes the field
        return live is None
    return bool(live == written)


def latest(store: Iterable[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    """The one value a kopf index Store holds for a single-object key (None if empty)."""
    value = None
    for value in store or ():
        pass
    return value


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the parts of an object we keep in an index (kopf's bodies are live views)."""
    return copy.deepcopy({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")})
