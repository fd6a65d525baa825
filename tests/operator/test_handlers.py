"""Handler-side logic without a cluster: the written-status cache, first-seen order, the checks
before a Job is created (scene PVC, API rejections) and the 409 adoption of create_or_adopt."""

from __future__ import annotations

import inspect
import json
import logging
import typing
from typing import Any

import kopf
import pytest
import testkit
from kubernetes_asyncio.client.exceptions import ApiException
from op_fixtures import job_for, training

from splatops import contract
from splatops.api import layout
from splatops.api.models import parse_spec
from splatops.controller import failures
from splatops.controller.handlers import training as training_handlers
from splatops.controller.handlers.state import WRITTEN_MAX_AGE, Runtime, contains
from splatops.controller.settings import Settings

KEY = ("default", "fox")
LOG = logging.getLogger("test")


def runtime() -> Runtime:
    return Runtime(settings=Settings())


# --- the written-status cache only bridges the watch lag --------------------------------------------


def test_cache_bridges_the_lag_then_is_dropped_when_the_index_shows_the_write() -> None:
    rt = runtime()
    rt.remember(KEY, {"phase": "Running", "reason": "TrainerRunning"}, now=0.0)
    before = {"phase": "Pending", "reason": "JobCreated", "jobName": "gst-fox"}
    assert rt.current_status(KEY, {"status": before}, now=1.0)["phase"] == "Running"  # index lags
    rt.observed(KEY, before, now=1.0)  # an older event: still lagging, keep the cache
    assert rt.trainings[KEY].written == {"phase": "Running", "reason": "TrainerRunning"}
    rt.observed(KEY, {**before, "phase": "Running", "reason": "TrainerRunning"}, now=1.1)  # our write's echo
    assert rt.trainings[KEY].written == {} and rt.trainings[KEY].written_at is None


def test_a_stale_cache_never_overrides_what_another_replica_wrote() -> None:
    """Failover: after the echo, the live status (written by the other replica) is what counts."""
    rt = runtime()
    rt.remember(KEY, {"phase": "Running"}, now=0.0)
    rt.observed(KEY, {"phase": "Running"}, now=0.1)
    other_replica = {"phase": "Succeeded", "reason": "TrainingComplete"}
    assert rt.current_status(KEY, {"status": other_replica}, now=500.0) == other_replica


def test_partly_shown_writes_keep_only_the_rest() -> None:
    rt = runtime()
    rt.remember(KEY, {"phase": "Running"}, now=0.0)
    rt.remember(KEY, {"progress": {"step": 10, "loss": 0.5}}, now=0.5)
    rt.observed(KEY, {"phase": "Running", "progress": {"step": 5, "loss": 0.6}}, now=0.6)
    assert rt.trainings[KEY].written == {"progress": {"step": 10, "loss": 0.5}}


def test_an_unshown_write_expires() -> None:
    """Overwritten by someone else before our echo arrived (e.g. while this replica was paused)."""
    rt = runtime()
    rt.remember(KEY, {"phase": "Running"}, now=0.0)
    rt.observed(KEY, {"phase": "Failed"}, now=1.0)
    assert rt.current_status(KEY, {"status": {"phase": "Failed"}}, now=2.0)["phase"] == "Running"
    assert rt.current_status(KEY, {"status": {"phase": "Failed"}}, now=WRITTEN_MAX_AGE + 1)["phase"] == "Failed"
    assert rt.trainings[KEY].written == {}


@pytest.mark.parametrize(
    ("live", "written", "shown"),
    [
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}}, True),  # merge patch: objects merge
        ({"b": {"c": 2}}, {"b": {"c": 3}}, False),
        ([1, 2], [1, 2], True),
        ([1, 2, 3], [1, 2], False),  # lists replace
        (None, None, True),  # null removes
        (1, None, False),
        (100, 100.0, True),
    ],
)
def test_contains(live: Any, written: Any, shown: bool) -> None:
    assert contains(live, written) is shown


def test_forget_and_first_seen() -> None:
    rt = runtime()
    assert [rt.first_seen(k) for k in (("d", "c"), ("d", "a"), ("d", "c"), ("d", "b"))] == [0, 1, 0, 2]
    rt.remember(("d", "c"), {"phase": "Pending"})
    rt.forget(("d", "c"))
    assert ("d", "c") not in rt.trainings
    assert rt.first_seen(("d", "c")) == 3  # a namesake created later queues behind


async def test_gst_index_records_order_and_drops_the_cache() -> None:
    from splatops.controller.handlers import children

    rt = runtime()
    rt.remember(KEY, {"phase": "Pending"})
    body = training()
    body["status"] = {"phase": "Pending"}
    out = await children.gst_index(rt, namespace="default", name="fox", body=kopf.Body(body))
    assert out[KEY]["status"] == {"phase": "Pending"} and rt.trainings[KEY].order == 0 and rt.trainings[KEY].written == {}


# --- the operator queue: slots reserved for trainings not handled yet ---------------------------------


def test_slots_reserve_a_place_for_older_trainings_not_handled_yet() -> None:
    """kopf may run ensure_job of trainings created together in any order: a training seen
    earlier but without a Job yet is ahead in the queue (has_job=False), not skipped."""
    from splatops.controller.handlers.admission import slots
    from splatops.controller.handlers.state import Indices

    rt = Runtime(settings=Settings(max_concurrent=1))
    bodies = {n: training(n) for n in ("old", "queued", "done", "mine")}
    bodies["queued"]["status"] = {"phase": "Queued"}
    bodies["done"]["status"] = {"phase": "Succeeded"}
    for n in ("old", "queued", "done", "mine"):
        rt.first_seen(("default", n))
    queued_job = job_for(bodies["queued"], rt.settings, suspend=True)
    rt.job_owner[("default", queued_job["metadata"]["name"])] = "queued"
    idx = Indices(gsts={("default", n): [b] for n, b in bodies.items()},  # type: ignore[arg-type]
                  jobs={("default", queued_job["metadata"]["name"]): [queued_job]}, pods={})  # type: ignore[arg-type]
    counted = slots(rt, idx)
    assert counted.running == 0 and counted.settled == frozenset()
    assert [(w.name, w.has_job) for w in sorted(counted.waiting)] == [("old", False), ("queued", True), ("mine", False)]


# --- checks before the Job: the scene PVC, and what the API server rejects -----------------------------


def api_error(code: int, reason: str, status_reason: str | None = None, message: str = "", name: str = "scenes") -> ApiException:
    exc = ApiException(status=code, reason=reason)
    if status_reason is not None:
        exc.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                               "reason": status_reason, "message": message,
                               "details": {"name": name, "kind": "persistentvolumeclaims"}}).encode()
    return exc


@pytest.mark.parametrize(
    ("code", "body", "missing"),
    [
        (404, {"kind": "Status", "reason": "NotFound", "message": 'persistentvolumeclaims "x" not found'}, True),
        (404, json.dumps({"kind": "Status", "reason": "NotFound"}).encode(), True),
        (404, {"kind": "Status", "reason": "Object Not Found"}, False),  # an API that does not serve PVCs
        (404, "404 page not found", False),
        (403, {"kind": "Status", "reason": "Forbidden"}, False),
        (None, None, False),
    ],
)
def test_is_not_found(code: int | None, body: Any, missing: bool) -> None:
    assert failures.is_not_found(code, body) is missing


def test_scene_pvc_message_says_which_claim_and_what_to_do() -> None:
    failure = failures.scene_pvc_not_found("team-a", "scenes", "scenes/fox")
    assert failure.reason == contract.Reason.SCENE_PVC_NOT_FOUND.value == "ScenePVCNotFound"
    for words in ('"scenes"', '"team-a"', "spec.scene.claimName", "Create it", "scenes/fox/", "re-create"):
        assert words in failure.message


def test_api_error_message() -> None:
    body = json.dumps({"kind": "Status", "message": 'Job.batch "gst-fox" is invalid: spec.template.spec.affinity: Invalid value'})
    assert failures.api_error_message(422, "Unprocessable Entity", body).startswith('Job.batch "gst-fox" is invalid')
    assert failures.api_error_message(400, "Bad Request", b"garbage") == "HTTP 400 Bad Request"


class FakeKube:
    """testkit.JobCreationKube: the Kube calls of the creation path, each answer set by the test."""

    def __init__(self, *, pvc: Exception | None = None, create: Exception | None = None,
                 existing: dict[str, Any] | None = None) -> None:
        self.pvc, self.create, self.existing = pvc, create, existing
        self.created: list[dict[str, Any]] = []

    async def read_pvc(self, namespace: str, name: str) -> dict[str, Any]:
        if self.pvc is not None:
            raise self.pvc
        return {"metadata": {"name": name, "namespace": namespace}}

    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        if self.create is not None:
            raise self.create
        self.created.append(job)
        return job

    async def read_job(self, namespace: str, name: str) -> dict[str, Any]:
        assert self.existing is not None
        return self.existing


def real_kube_class() -> type:
    """The class of Runtime.kube, the client the operator really uses (wherever it lives)."""
    (cls,) = [t for t in typing.get_args(typing.get_type_hints(Runtime)["kube"]) if t is not type(None)]
    return cls


@pytest.mark.parametrize("impl", [real_kube_class(), FakeKube], ids=["real", "fake"])
def test_fake_and_real_kube_match_the_protocol(impl: type) -> None:
    """The fake stands in for the real client only while both have the Protocol's signatures."""
    members = [n for n in vars(testkit.JobCreationKube) if not n.startswith("_")]
    assert members == ["read_pvc", "create_job", "read_job"]
    for name in members:
        want, got = inspect.signature(getattr(testkit.JobCreationKube, name)), inspect.signature(getattr(impl, name))
        assert inspect.iscoroutinefunction(getattr(impl, name)), name
        assert list(got.parameters) == list(want.parameters), (name, got, want)


def use(rt: Runtime, fake: testkit.JobCreationKube) -> Runtime:
    rt.kube = typing.cast(Any, fake)  # the Protocol is the part of Kube these paths call
    return rt


SPEC = parse_spec(training()["spec"])


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (None, None),
        (api_error(404, "Not Found", "NotFound", 'persistentvolumeclaims "scenes" not found'), "ScenePVCNotFound"),
        (api_error(403, "Forbidden", "Forbidden"), None),  # RBAC without get on PVCs: skip the check
        (api_error(404, "Not Found", "Object Not Found"), None),  # the API does not serve PVCs: skip
    ],
)
async def test_scene_problem(error: Exception | None, reason: str | None) -> None:
    rt = runtime()
    use(rt, FakeKube(pvc=error))
    problem = await training_handlers.scene_problem(rt, "default", SPEC, LOG)
    assert (problem.reason if problem else None) == reason


async def test_scene_problem_retries_on_server_errors() -> None:
    rt = runtime()
    use(rt, FakeKube(pvc=api_error(500, "Internal Server Error")))
    with pytest.raises(ApiException):
        await training_handlers.scene_problem(rt, "default", SPEC, LOG)


MANIFEST = job_for(training(), Settings())


@pytest.mark.parametrize("code", [400, 422])
async def test_rejected_job_is_not_retried(code: int) -> None:
    rt = runtime()
    message = 'Job.batch "gst-fox" is invalid: spec.template.spec.affinity.nodeAffinity: Invalid value'
    use(rt, FakeKube(create=api_error(code, "Invalid", "Invalid", message)))
    with pytest.raises(training_handlers.JobRejected) as err:
        await training_handlers.create_or_adopt(rt, "default", MANIFEST, "uid-fox", LOG)
    assert str(err.value) == f"the API server rejected Job gst-fox: {message}"


async def test_409_adopts_our_own_job() -> None:
    rt = runtime()
    ours = job_for(training(), Settings())
    use(rt, FakeKube(create=api_error(409, "Conflict", "AlreadyExists"), existing=ours))
    job, created = await training_handlers.create_or_adopt(rt, "default", MANIFEST, "uid-fox", LOG)
    assert job is ours and created is False
    use(rt, FakeKube())
    assert (await training_handlers.create_or_adopt(rt, "default", MANIFEST, "uid-fox", LOG))[1] is True


async def test_409_of_another_owner_is_not_adopted() -> None:
    rt = runtime()
    theirs = job_for(training(), Settings())
    theirs["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-namesake"
    use(rt, FakeKube(create=api_error(409, "Conflict", "AlreadyExists"), existing=theirs))
    with pytest.raises(training_handlers.ForeignJob) as err:
        await training_handlers.create_or_adopt(rt, "default", MANIFEST, "uid-fox", LOG)
    assert err.value.job is theirs


def test_foreign_job_message_names_the_owner() -> None:
    theirs = job_for(training(), Settings())
    theirs["metadata"]["ownerReferences"][0]["uid"] = "uid-old"
    namesake = training_handlers.foreign_job_message("gst-fox", training(), theirs)
    assert "deleted GaussianSplatTraining fox (uid uid-old)" in namesake and "garbage collection" in namesake
    theirs["metadata"]["ownerReferences"] = [{"kind": "CronJob", "name": "nightly", "uid": "u1"}]
    other = training_handlers.foreign_job_message("gst-fox", training(), theirs)
    assert "belongs to CronJob nightly (uid u1)" in other and "delete that Job" in other
    theirs["metadata"]["ownerReferences"] = []
    assert "belongs to no owner" in training_handlers.foreign_job_message("gst-fox", training(), theirs)


# --- kube: error statuses raise (kubernetes_asyncio returns them as-is without preloading) -------------


class RawResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.reason, self._body = status, "Conflict" if status == 409 else "OK", body
        self.headers: dict[str, str] = {}

    async def read(self) -> bytes:
        return self._body


async def test_kube_error_statuses_raise() -> None:
    from splatops import kubeapi

    ok = RawResponse(201, b"{}")
    assert await kubeapi.raise_for_status(ok) is ok
    body = json.dumps({"kind": "Status", "reason": "AlreadyExists", "code": 409}).encode()
    with pytest.raises(ApiException) as err:
        await kubeapi.raise_for_status(RawResponse(409, body))
    assert err.value.status == 409 and kubeapi.api_status(err.value.body)["reason"] == "AlreadyExists"


# --- the model path is parsed once per generation ---------------------------------------------------


def test_the_spec_is_parsed_once_per_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    from splatops.controller.handlers import state

    rt = runtime()
    spec = training()["spec"]
    parsed: list[Any] = []
    real = state.parse_spec
    monkeypatch.setattr(state, "parse_spec", lambda s: parsed.append(s) or real(s))

    def at(generation: int, spec: dict[str, Any]) -> Any:
        return rt.location(KEY, {"metadata": {"name": KEY[1], "uid": "u1", "generation": generation}, "spec": spec})

    first = at(1, spec)
    assert first == layout.output_location(parse_spec(spec), KEY[1]) and first
    assert at(1, spec) == first and len(parsed) == 1
    assert rt.spec(KEY, {"metadata": {"uid": "u1", "generation": 1}, "spec": spec}) == parse_spec(spec) and len(parsed) == 1
    assert at(2, {**spec, "suspend": True}) == first and len(parsed) == 2
    assert at(3, {"scene": {}}) is None  # invalid: no path, no crash
    assert rt.trainings[KEY].parsed.problem  # what the InvalidSpec failure says
    rt.forget(KEY)
    assert KEY not in rt.trainings
