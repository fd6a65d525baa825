"""Operator settings (env parsing + validation errors), kopf settings mapping, metric names."""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
import pytest

from splatops.controller import main, metric_names, metrics
from splatops.controller.settings import Settings, SettingsError

ENV = "SPLATOPS_OPERATOR_"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith((ENV, "SPLATOPS_DEFAULT_")):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = Settings.from_env()
    assert s.namespaces == [] and s.max_concurrent == 0 and s.progress_interval == 15 and s.status_min_interval == 10
    assert s.metrics_port == 8080 and s.liveness_endpoint == "http://0.0.0.0:8081/healthz"
    assert s.gpu_node_label_values[0] == "g5.xlarge" and s.gpu_resource_name == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"NAMESPACES": "a, b,,c"}, "namespaces", ["a", "b", "c"]),
        ({"MAX_CONCURRENT": "4"}, "max_concurrent", 4),
        ({"GPU_NODE_LABEL_VALUES": "g5.xlarge,g5.2xlarge"}, "gpu_node_label_values", ["g5.xlarge", "g5.2xlarge"]),
        ({"TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]'}, "tolerations", [{"key": "gpu", "operator": "Exists"}]),
        ({"STANDALONE": "true"}, "standalone", True),
        ({"PRIORITY": "100"}, "priority", 100),
        ({"LIVENESS_PORT": "0"}, "liveness_endpoint", None),
    ],
)
def test_env_parsing(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, value: Any) -> None:
    for key, val in env.items():
        monkeypatch.setenv(ENV + key, val)
    assert getattr(Settings.from_env(), field) == value


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MAX_CONCURRENT": "-1"}, "SPLATOPS_OPERATOR_MAX_CONCURRENT"),
        ({"PROGRESS_INTERVAL": "0"}, "SPLATOPS_OPERATOR_PROGRESS_INTERVAL"),
        ({"TOLERATIONS": "not json"}, "SPLATOPS_OPERATOR_TOLERATIONS"),
        ({"TOLERATIONS": '{"key": 1}'}, "SPLATOPS_OPERATOR_TOLERATIONS"),
        ({"IMAGE_PULL_POLICY": "Sometimes"}, "SPLATOPS_OPERATOR_IMAGE_PULL_POLICY"),
        ({"METRICS_PORT": "70000"}, "SPLATOPS_OPERATOR_METRICS_PORT"),
        ({"LIVENESS_PATH": "healthz"}, "SPLATOPS_OPERATOR_LIVENESS_PATH"),
        ({"METRICS_PORT": "9000", "LIVENESS_PORT": "9000"}, "must differ"),
        ({"WATCH_SERVER_TIMEOUT": "600", "WATCH_CLIENT_TIMEOUT": "60"}, "watch_client_timeout"),
        ({"GPU_NODE_LABEL_VALUES": ""}, "gpu_node_label_values"),
        ({"STANDALONE": "true", "PEERING_MANDATORY": "true"}, "exclude each other"),
        ({"PEERING_LIFETIME": "1"}, "SPLATOPS_OPERATOR_PEERING_LIFETIME"),
    ],
)
def test_invalid_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    for key, val in env.items():
        monkeypatch.setenv(ENV + key, val)
    with pytest.raises(SettingsError) as err:
        Settings.from_env()
    assert needle in str(err.value) and "invalid operator settings" in str(err.value)


def test_job_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert (s.default_backoff_limit, s.default_active_deadline_seconds, s.default_ttl_seconds_after_finished) == (3, 86400, 604800)
    monkeypatch.setenv("SPLATOPS_DEFAULT_BACKOFF_LIMIT", "5")
    monkeypatch.setenv("SPLATOPS_DEFAULT_ACTIVE_DEADLINE_SECONDS", "0")
    monkeypatch.setenv("SPLATOPS_OPERATOR_DEFAULT_TTL_SECONDS_AFTER_FINISHED", "3600")  # the operator prefix works too
    s = Settings.from_env()
    assert (s.default_backoff_limit, s.default_active_deadline_seconds, s.default_ttl_seconds_after_finished) == (5, 0, 3600)
    assert Settings(default_backoff_limit=1).default_backoff_limit == 1  # by field name (splatops local does this)


@pytest.mark.parametrize(
    ("var", "value"),
    [("SPLATOPS_DEFAULT_BACKOFF_LIMIT", "-1"), ("SPLATOPS_DEFAULT_BACKOFF_LIMIT", "101"),
     ("SPLATOPS_DEFAULT_ACTIVE_DEADLINE_SECONDS", "a day"), ("SPLATOPS_DEFAULT_TTL_SECONDS_AFTER_FINISHED", "-5")],
)
def test_invalid_job_default_names_its_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        Settings.from_env()
    assert var in str(err.value) and "SPLATOPS_OPERATOR_" + var.removeprefix("SPLATOPS_") in str(err.value)


def test_kopf_settings_mapping() -> None:
    s = Settings(priority=200, peering_name="splat", watch_server_timeout=120, watch_client_timeout=150,
                 watch_inactivity_timeout=300, event_level="INFO", peering_lifetime=30)
    ks = main.kopf_settings(s)
    assert (ks.peering.name, ks.peering.priority, ks.peering.standalone) == ("splat", 200, False)
    assert ks.peering.lifetime == 30
    assert (ks.watching.server_timeout, ks.watching.client_timeout, ks.watching.inactivity_timeout) == (120, 150, 300)
    assert ks.posting.level == logging.INFO
    assert isinstance(ks.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(ks.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    # Jobs and pods are filtered by the API server: only the operator's own.
    pods = kopf.Resource("", "v1", "pods", kind="Pod", namespaced=True)
    jobs = kopf.Resource("batch", "v1", "jobs", kind="Job", namespaced=True)
    managed = "app.kubernetes.io/managed-by=splatops-operator"
    assert ks.watching.label_selectors.collect(pods) == ks.watching.label_selectors.collect(jobs) == [managed]


def test_gc_tuning_only_when_the_operator_owns_the_process() -> None:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(main.tune_gc(True)))
    thread.start()
    thread.join()
    assert result == [False]  # embedded (a thread): the host process's GC is left alone
    assert main.tune_gc(False) is False
    assert Settings().gc_tuning is True


@pytest.mark.parametrize(
    ("namespaces", "expected"),
    [([], {"clusterwide": True}), (["a", "b-*"], {"namespaces": ["a", "b-*"], "clusterwide": False})],
)
def test_namespaces(namespaces: list[str], expected: dict[str, Any]) -> None:
    assert main.namespaces_kwargs(Settings(namespaces=namespaces)) == expected


def test_every_chart_metric_is_exported() -> None:
    wanted = {v for k, v in vars(metric_names).items() if k.isupper() and isinstance(v, str)}
    exported = metrics.exported_names()
    assert wanted - exported == set()


def test_phase_gauge_counts_by_namespace_and_phase() -> None:
    collector = metrics.PhaseCollector()
    collector.set("a", "x", "Running")
    collector.set("a", "y", "Running")
    collector.set("b", "z", None)
    collector.forget("a", "y")
    samples = {(s.labels["namespace"], s.labels["phase"]): s.value for f in collector.collect() for s in f.samples}
    assert samples[("a", "Running")] == 1 and samples[("b", "Pending")] == 1 and samples[("a", "Failed")] == 0


def test_handlers_register() -> None:
    from splatops.controller.handlers import register

    registry = kopf.OperatorRegistry()
    register(registry, Settings())
    ids = {h.id for h in registry._indexing.get_all_handlers()}
    assert {"gst_index", "job_index", "pod_index"} <= ids


def test_watch_server_timeout_is_whole_seconds() -> None:
    """kopf puts it in the URL as `timeoutSeconds`; a real API server answers 400 to "300.0"."""
    assert str(main.kopf_settings(Settings()).watching.server_timeout) == "300"
