"""The operator's Prometheus metrics (names fixed in metric_names.py; the chart queries them).

Two kinds: what happened in this process (counters, histograms: module-level, in REGISTRY), and
one operator's view of the trainings it handles (phases, progress gauges: an OperatorMetrics per
operator run). /metrics serves both (serving_registry()).
"""

from __future__ import annotations

import threading
from typing import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splatops import contract
from splatops.api.models import Phase
from splatops.controller import metric_names as m

REGISTRY = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (60, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 300, 600, 1800, 3600, 7200, 21600)

STARTED = Counter(m.STARTED.removesuffix("_total"), "Trainings whose Job was admitted to run.", ["namespace"], registry=REGISTRY)
SUCCEEDED = Counter(m.SUCCEEDED.removesuffix("_total"), "Trainings that succeeded.", ["namespace"], registry=REGISTRY)
FAILED = Counter(m.FAILED.removesuffix("_total"), "Trainings that failed, by reason.", ["namespace", "reason"], registry=REGISTRY)
DURATION = Histogram(m.DURATION, "Seconds from start to finish of a training.", ["outcome"], buckets=_DURATION_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram(m.QUEUE_WAIT, "Seconds from creation to admission of a training.", buckets=_WAIT_BUCKETS, registry=REGISTRY)
RECONCILE_ERRORS = Counter(m.RECONCILE_ERRORS.removesuffix("_total"), "Handler errors (each retried by kopf).", ["handler"], registry=REGISTRY)
STATUS_WRITES = Counter("splatops_status_writes", "Status patches written, by kind (phase or progress).", ["kind"], registry=REGISTRY)

# Series exist at 0 from the start for every label value known in advance: a counter whose
# series appears with its first increment hides that increment from increase() and rate().
for _outcome in ("succeeded", "failed"):
    DURATION.labels(_outcome)
for _kind in ("phase", "progress"):
    STATUS_WRITES.labels(_kind)
_COUNTED_NAMESPACES: set[str] = set()
_COUNTED_LOCK = threading.Lock()


def count_namespace(namespace: str) -> None:
    """The outcome counters of a namespace at 0 (every failure reason), once it has a training."""
    with _COUNTED_LOCK:
        if namespace in _COUNTED_NAMESPACES:
            return
        _COUNTED_NAMESPACES.add(namespace)
    STARTED.labels(namespace)
    SUCCEEDED.labels(namespace)
    for reason in (*(r.value for r in contract.Reason), "Unknown"):
        FAILED.labels(namespace, reason)


class PhaseCollector(Collector):
    """Phase metrics computed at scrape time from the operator's view of each training.

    - `splatops_trainings{namespace,phase}`: how many trainings are in each phase (every phase
      listed, 0 included, for each namespace with a training);
    - `splatops_training_phase{namespace,name,phase}`: 1 for each training's current phase only
      (kube-state-metrics style, e.g. kube_pod_status_phase, minus the 0 series), so alerts can
      ask "is this training Running now" (`and on (namespace, name)
      splatops_training_phase{phase="Running"} == 1`) and "has it itself waited N minutes" (`for:`).
      A training's series go when it is deleted (forget()).

    Served through an OperatorMetrics, which hides it while the operator is paused.
    """

    _COUNT_HELP = "GaussianSplatTrainings by phase."
    _PHASE_HELP = "The current phase of each GaussianSplatTraining (1; other phases have no series)."

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase or Phase.PENDING.value

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def clear(self) -> None:
        with self._lock:
            self._phases.clear()

    def phases(self) -> dict[tuple[str, str], str]:
        """A snapshot: (namespace, name) -> current phase."""
        with self._lock:
            return dict(self._phases)

    def counts(self) -> dict[tuple[str, str], int]:
        return _count(self.phases())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        phases = self.phases()  # one snapshot: both families agree
        counts = _count(phases)
        family = GaugeMetricFamily(m.TRAININGS, self._COUNT_HELP, labels=["namespace", "phase"])
        for ns in sorted({ns for ns, _ in phases}):
            for phase in Phase:
                family.add_metric([ns, phase.value], counts.get((ns, phase.value), 0))
        yield family
        current = GaugeMetricFamily(m.TRAINING_PHASE, self._PHASE_HELP, labels=["namespace", "name", "phase"])
        for (ns, name), phase in sorted(phases.items()):
            current.add_metric([ns, name, phase], 1)
        yield current

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(m.TRAININGS, self._COUNT_HELP, labels=["namespace", "phase"])
        yield GaugeMetricFamily(m.TRAINING_PHASE, self._PHASE_HELP, labels=["namespace", "name", "phase"])


def _count(phases: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for (namespace, _), phase in phases.items():
        counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
    return counts


class OperatorMetrics(Collector):
    """One operator run's per-training series, exported only while it is the active replica.

    kopf peering pauses a standby replica by stopping its watches, so what it knew about trainings
    freezes there: exported, it would double the phase counts of the active replica and show
    long-finished trainings as Running. So `splatops_operator_active` says whether this replica
    handles trainings (set by handlers/activity.py), and only while it is 1 are the phases and
    progress gauges exported; a pause forgets them, and on resuming kopf's re-list fills them
    again from the cluster's current state.
    """

    _ACTIVE_HELP = "1 while this operator replica handles trainings; 0 while kopf peering pauses it (standby)."

    def __init__(self, active: bool = False) -> None:
        self.phases = PhaseCollector()
        labels = ["namespace", "name"]
        self.progress_ratio = Gauge(m.PROGRESS_RATIO, "Training progress, 0 to 1.", labels, registry=None)
        self.step = Gauge(m.STEP, "Current training iteration.", labels, registry=None)
        self.last_progress = Gauge(m.LAST_PROGRESS, "Unix time of the last progress read.", labels, registry=None)
        self.loss = Gauge(m.LOSS, "Latest training loss.", labels, registry=None)
        self.psnr = Gauge(m.PSNR, "Latest evaluation PSNR (dB).", labels, registry=None)
        self._gauges = (self.progress_ratio, self.step, self.last_progress, self.loss, self.psnr)
        self._active = active

    @property
    def active(self) -> bool:
        return self._active

    def set_active(self, active: bool) -> None:
        """Leaving the active state forgets every training: nothing seen before a pause is
        trusted after it (a training deleted meanwhile would otherwise stay for good)."""
        self._active = active
        if not active:
            self.phases.clear()
            for gauge in self._gauges:
                gauge.clear()

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        count_namespace(namespace)
        self.phases.set(namespace, name, phase)

    def record_progress(self, namespace: str, name: str, progress: Mapping[str, object], now: float) -> None:
        labels = (namespace, name)
        self.progress_ratio.labels(*labels).set(float(progress.get("percent") or 0.0) / 100.0)  # type: ignore[arg-type]
        self.step.labels(*labels).set(float(progress.get("step") or 0))  # type: ignore[arg-type]
        self.last_progress.labels(*labels).set(now)
        if progress.get("loss") is not None:
            self.loss.labels(*labels).set(float(progress["loss"]))  # type: ignore[arg-type]
        if progress.get("psnr") is not None:
            self.psnr.labels(*labels).set(float(progress["psnr"]))  # type: ignore[arg-type]

    def forget_training(self, namespace: str, name: str) -> None:
        self.phases.forget(namespace, name)
        for gauge in self._gauges:
            try:
                gauge.remove(namespace, name)
            except KeyError:
                pass  # never had progress: nothing to remove

    def collect(self) -> Iterable[Metric]:
        active = self._active
        yield GaugeMetricFamily(m.OPERATOR_ACTIVE, self._ACTIVE_HELP, value=1.0 if active else 0.0)
        for collector in (self.phases, *self._gauges):
            # Paused: the families without samples. A handler still finishing an event that
            # arrived just before the pause may write after set_active(False) cleared them.
            yield from (collector.collect() if active else collector.describe())

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(m.OPERATOR_ACTIVE, self._ACTIVE_HELP)
        for collector in (self.phases, *self._gauges):
            yield from collector.describe()


class _ProcessMetrics(Collector):
    """REGISTRY's families, served next to an operator's own (registries cannot nest)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def serving_registry(view: OperatorMetrics) -> CollectorRegistry:
    """What /metrics shows: this process's counters and histograms, and `view`."""
    registry = CollectorRegistry()
    registry.register(_ProcessMetrics())
    registry.register(view)
    return registry


def exported_names() -> set[str]:
    """Every sample family name /metrics exposes (for the chart-consistency test)."""
    names: set[str] = set()
    for family in serving_registry(OperatorMetrics()).collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        for sample in family.samples:
            names.add(sample.name)
    return names


def serve(port: int, view: OperatorMetrics) -> WSGIServer | None:
    """Serve /metrics on `port` (0: not at all) in a daemon thread; shut it down when done."""
    if not port:
        return None
    server, _ = start_http_server(port, registry=serving_registry(view))
    return server
