"""The operator's Prometheus metrics (names fixed in metric_names.py; the chart queries them)."""

from __future__ import annotations

import threading
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
PROGRESS_RATIO = Gauge(m.PROGRESS_RATIO, "Training progress, 0 to 1.", ["namespace", "name"], registry=REGISTRY)
STEP = Gauge(m.STEP, "Current training iteration.", ["namespace", "name"], registry=REGISTRY)
LAST_PROGRESS = Gauge(m.LAST_PROGRESS, "Unix time of the last progress read.", ["namespace", "name"], registry=REGISTRY)
LOSS = Gauge(m.LOSS, "Latest training loss.", ["namespace", "name"], registry=REGISTRY)
PSNR = Gauge(m.PSNR, "Latest evaluation PSNR (dB).", ["namespace", "name"], registry=REGISTRY)

_PER_TRAINING = (PROGRESS_RATIO, STEP, LAST_PROGRESS, LOSS, PSNR)


class PhaseCollector(Collector):
    """Phase metrics computed at scrape time from the operator's view of each training.

    - `splatops_trainings{namespace,phase}`: how many trainings are in each phase (every phase
      listed, 0 included, for each namespace with a training);
    - `splatops_training_phase{namespace,name,phase}`: 1 for each training's current phase only
      (kube-state-metrics style, e.g. kube_pod_status_phase, minus the 0 series), so alerts can
      ask "is this training Running now" (`and on (namespace, name)
      splatops_training_phase{phase="Running"} == 1`) and "has it itself waited N minutes" (`for:`).
      A training's series go when it is deleted (forget()).
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


PHASES = PhaseCollector()
REGISTRY.register(PHASES)


def record_progress(namespace: str, name: str, progress: Mapping[str, object], now: float) -> None:
    labels = (namespace, name)
    PROGRESS_RATIO.labels(*labels).set(float(progress.get("percent") or 0.0) / 100.0)  # type: ignore[arg-type]
    STEP.labels(*labels).set(float(progress.get("step") or 0))  # type: ignore[arg-type]
    LAST_PROGRESS.labels(*labels).set(now)
    if progress.get("loss") is not None:
        LOSS.labels(*labels).set(float(progress["loss"]))  # type: ignore[arg-type]
    if progress.get("psnr") is not None:
        PSNR.labels(*labels).set(float(progress["psnr"]))  # type: ignore[arg-type]


def forget_training(namespace: str, name: str) -> None:
    PHASES.forget(namespace, name)
    for gauge in _PER_TRAINING:
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass  # never had progress: nothing to remove


def exported_names() -> set[str]:
    """Every sample family name the registry exposes (for the chart-consistency test)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        for sample in family.samples:
            names.add(sample.name)
    return names


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)
