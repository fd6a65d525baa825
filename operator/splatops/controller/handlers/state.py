"""The operator's in-memory state shared by the handlers (one instance per operator process).

Only bookkeeping that the cluster cannot tell us fast enough lives here, and all of it about one
training in its TrainingState (dropped whole when the training is deleted): what we last wrote
(kopf's index lags our own writes by one watch event; forgotten as soon as the index shows it),
whether we just admitted its Job, the order it was first seen in, its parsed spec, throttle clocks.
Across trainings: who writes which output directory (Outputs), which training owns which Job.
Everything else is read from kopf's indices, which kopf fills before any handler runs.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import time
from typing import Any, Iterable, Iterator, Mapping

import kopf
from pydantic import ValidationError

from splatops import names
from splatops.api import layout
from splatops.api.layout import OutputKey, OutputLocation
from splatops.api.models import Spec, parse_spec
from splatops.kubeapi import Kube
from splatops.controller.metrics import OperatorMetrics
from splatops.controller.settings import Settings

Key = tuple[str, str]  # (namespace, name)
GST = (names.GROUP, names.VERSION, names.PLURAL)
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# The ids of kopf's indices: kopf passes each index to every handler as a keyword of this name.
GST_INDEX, JOB_INDEX, POD_INDEX = "gst_index", "job_index", "pod_index"
# A written status the index has not shown within this many seconds is no longer trusted over the
# live one (someone else wrote since, e.g. the other replica while this one was paused).
WRITTEN_MAX_AGE = 60.0


@dataclasses.dataclass(frozen=True)
class ParsedSpec:
    """A training's spec parsed once per (uid, generation): reconcile runs on every event, and a
    pydantic parse each time was ~5 % of the operator's CPU in a burst."""

    version: tuple[Any, Any]  # (uid, generation)
    spec: Spec | None  # None: the schema let it through but the operator cannot run it
    problem: str | None = None  # why not, for the InvalidSpec failure
    location: OutputLocation | None = None  # where it writes

    @classmethod
    def of(cls, training: Mapping[str, Any]) -> ParsedSpec:
        meta = training.get("metadata") or {}
        version = (meta.get("uid"), meta.get("generation"))
        try:
            spec = parse_spec(dict(training.get("spec") or {}))
        except ValidationError as exc:
            return cls(version, None, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        return cls(version, spec, None, layout.output_location(spec, str(meta.get("name") or "")))


@dataclasses.dataclass
class TrainingState:
    """What this operator process keeps about one training between events. Deleting the training
    drops it whole (Runtime.forget)."""

    order: int  # first-seen order (FCFS tie-break among equal creation timestamps)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # one reconcile at a time
    written: dict[str, Any] = dataclasses.field(default_factory=dict)  # status fields not yet in the index
    written_at: float | None = None  # monotonic time of the last write
    parsed: ParsedSpec | None = None
    admitted: bool = False  # its Job runs by our admission; the watch may not show it yet
    job_created: bool = False  # we created or adopted its Job
    suspend_seen: bool | None = None  # spec.suspend last acted on
    job_blocked: tuple[str, str] | None = None  # why no Job yet: (reason, message)
    kueue_seen: tuple[float, str | None] | None = None  # (monotonic time, Kueue's message)
    last_progress_write: float | None = None  # wall time of the last progress write
    last_progress_step: int | str | None = None  # the step (or stage message) it wrote
    gpu_memory_told: Mapping[str, Any] | None = None  # the status.gpuMemory it wrote and warned about
    retired_jobs: set[str] = dataclasses.field(default_factory=set)  # uids of its Jobs we deleted (OOM retries)


@dataclasses.dataclass
class Runtime:
    settings: Settings
    kube: Kube | None = None
    metrics: OperatorMetrics = dataclasses.field(default_factory=OperatorMetrics)  # this run's per-training series
    admission_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    trainings: dict[Key, TrainingState] = dataclasses.field(default_factory=dict)
    outputs: Outputs = dataclasses.field(default_factory=lambda: Outputs())  # who writes which output directory
    job_owner: dict[Key, str] = dataclasses.field(default_factory=dict)  # (ns, job) -> training
    pvc_seen: dict[Key, float] = dataclasses.field(default_factory=dict)  # (ns, claim) -> monotonic time
    warned: set[str] = dataclasses.field(default_factory=set)  # once-per-process warnings given
    _order: Iterator[int] = dataclasses.field(default_factory=itertools.count)

    def state(self, key: Key) -> TrainingState:
        """The training's state, made the first time the operator sees it."""
        st = self.trainings.get(key)
        if st is None:
            st = self.trainings[key] = TrainingState(order=next(self._order))
        return st

    def forget(self, key: Key) -> None:
        self.trainings.pop(key, None)
        self.outputs.forget(key)

    def lock(self, key: Key) -> asyncio.Lock:
        return self.state(key).lock

    def first_seen(self, key: Key) -> int:
        """The order in which the operator first saw this training (for FCFS among equal timestamps)."""
        return self.state(key).order

    def admitted(self) -> frozenset[Key]:
        return frozenset(key for key, st in self.trainings.items() if st.admitted)

    def settle(self, keys: Iterable[Key]) -> None:
        """The index shows these admitted trainings' Jobs now: stop counting them by hand."""
        for key in keys:
            if key in self.trainings:
                self.trainings[key].admitted = False

    def retired(self, key: Key, job: Mapping[str, Any] | None) -> bool:
        """A Job on its way out: marked deleting, or deleted by us before the index shows it."""
        if job is None:
            return False
        meta = job.get("metadata") or {}
        st = self.trainings.get(key)
        return bool(meta.get("deletionTimestamp")) or (st is not None and meta.get("uid") in st.retired_jobs)

    def parsed(self, key: Key, training: Mapping[str, Any]) -> ParsedSpec:
        """The training's spec, parsed once per generation (the one parse of the operator). Also
        files the training under its output directory."""
        meta = training.get("metadata") or {}
        st = self.state(key)
        if st.parsed is None or st.parsed.version != (meta.get("uid"), meta.get("generation")):
            st.parsed = ParsedSpec.of(training)
            self.outputs.file(key, st.parsed.location.key(key[0]) if st.parsed.location is not None else None)
        return st.parsed

    def spec(self, key: Key, training: Mapping[str, Any]) -> Spec | None:
        return self.parsed(key, training).spec

    def location(self, key: Key, training: Mapping[str, Any]) -> OutputLocation | None:
        """Where the training writes (None if its spec is invalid)."""
        return self.parsed(key, training).location

    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the Kubernetes client is not connected yet (startup handler has not run)")
        return self.kube

    def current_status(self, key: Key, training: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
        """The resource's status as we last wrote it (the index may not have seen our write yet)."""
        st = self.trainings.get(key)
        if st is None:
            return dict(training.get("status") or {})
        self._expire(st, time.monotonic() if now is None else now)
        return {**(training.get("status") or {}), **st.written}

    def remember(self, key: Key, patch: Mapping[str, Any], now: float | None = None) -> None:
        st = self.state(key)
        st.written = {**st.written, **patch}
        st.written_at = time.monotonic() if now is None else now

    def observed(self, key: Key, status: Mapping[str, Any] | None, now: float | None = None) -> None:
        """The index received the resource with `status`: forget the written fields it shows.

        The cache only bridges the watch lag. Kept longer, it would override the live status
        after another replica (peering failover) or anyone else wrote it: duplicate phase-change
        Events and metrics, or writes skipped because the stale cache already "has" them.
        """
        st = self.trainings.get(key)
        if st is None or not st.written:
            return
        live = status or {}
        st.written = {k: v for k, v in st.written.items() if not contains(live.get(k), v)}
        if st.written:
            self._expire(st, time.monotonic() if now is None else now)
        else:
            st.written_at = None

    @staticmethod
    def _expire(st: TrainingState, now: float) -> None:
        if st.written and st.written_at is not None and now - st.written_at > WRITTEN_MAX_AGE:
            st.written, st.written_at = {}, None


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
