"""Users' access through the built-in roles (aggregated ClusterRoles, rendered by real Helm) and
the Kueue example set: a training with a queueName, its LocalQueue and a ClusterQueue whose quota
covers every resource the operator's Job for it requests (else Kueue never admits it)."""

from __future__ import annotations

import re

import kubernetes_validate
import yaml

import helm_env
from helm_env import find
from splatops import names
from splatops.api.models import GaussianSplatTraining, parse_spec
from splatops.controller import jobs
from splatops.controller.settings import Settings

ALL = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
KUEUE = helm_env.ROOT / "examples" / "kueue"


def _aggregated(objects: list[dict], label: str) -> list[dict]:
    return [o for o in find(objects, "ClusterRole") if o["metadata"]["labels"].get(f"rbac.authorization.k8s.io/{label}") == "true"]


def test_built_in_roles_get_trainings(renders) -> None:
    objects = renders.objects("default")
    for label, verbs in (("aggregate-to-admin", ALL), ("aggregate-to-edit", ALL), ("aggregate-to-view", {"get", "list", "watch"})):
        (role,) = _aggregated(objects, label)
        kubernetes_validate.validate(role, "1.33.0", strict=True)
        granted = {(r, v) for rule in role["rules"] if names.GROUP in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
        assert {(names.PLURAL, v) for v in verbs} <= granted, label
        assert not {v for r, v in granted if r == f"{names.PLURAL}/status"} - {"get", "list", "watch"}, "status is the operator's"
    view = _aggregated(objects, "aggregate-to-view")[0]
    assert {v for rule in view["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}
    # Never on the operator's own roles (those are bound to its service account only).
    assert not any(re.search(r"-(operator|discovery)$", r["metadata"]["name"]) for r in _aggregated(objects, "aggregate-to-edit"))


def test_aggregation_can_be_turned_off(renders, tmp_path) -> None:
    objects = helm_env.render(tmp_path, {"rbac": {"aggregateToDefaultRoles": False}})
    assert not any(_aggregated(objects, label) for label in ("aggregate-to-admin", "aggregate-to-edit", "aggregate-to-view"))


def _kueue() -> dict[str, dict]:
    docs = [d for p in sorted(KUEUE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kueue_example_admits_the_operators_job() -> None:
    docs = _kueue()
    training, local, cluster, flavor = (docs[k] for k in ("GaussianSplatTraining", "LocalQueue", "ClusterQueue", "ResourceFlavor"))
    assert all(d["apiVersion"] == "kueue.x-k8s.io/v1beta1" for d in (local, cluster, flavor))
    GaussianSplatTraining.model_validate(training)
    assert training["spec"]["queueName"] == local["metadata"]["name"]
    assert training["metadata"]["namespace"] == local["metadata"]["namespace"]
    assert local["spec"]["clusterQueue"] == cluster["metadata"]["name"]
    body = {**training, "metadata": {**training["metadata"], "uid": "0f0e0d0c-0000-4000-8000-000000000000"}}
    job = jobs.build_job(body, parse_spec(body["spec"]), Settings())
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == local["metadata"]["name"]
    requests = job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    (group,) = cluster["spec"]["resourceGroups"]
    assert set(requests) <= set(group["coveredResources"]), "Kueue never admits a Job asking for an uncovered resource"
    (a10g,) = [f for f in group["flavors"] if f["name"] == flavor["metadata"]["name"]]
    quota = {r["name"]: r["nominalQuota"] for r in a10g["resources"]}
    assert set(quota) == set(group["coveredResources"])
    units = {"Gi": 1024**3, "": 1}
    def amount(q) -> float:
        number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
        return float(number) * units[unit]
    fits = min(amount(quota[k]) // amount(v) for k, v in requests.items())
    assert fits == 4, "the quota runs four default trainings at once"
