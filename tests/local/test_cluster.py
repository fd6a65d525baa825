"""SplatopsEmulator: each API-server behaviour it adds to kmock, over real HTTP."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import yaml
from testkit import training

from splatops import names
from splatops.local import cluster as c

NS = "default"
GST = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{NS}/{names.PLURAL}"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": names.CRD_NAME},
    "spec": {"group": names.GROUP, "names": {"plural": names.PLURAL, "kind": names.KIND},
             "scope": "Namespaced", "versions": [{"name": names.VERSION, "served": True, "storage": True,
             "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                 "spec": {"type": "object", "properties": {
                     "maxSteps": {"type": "integer", "default": 30000},
                     "dataFactor": {"type": "integer", "default": 1},
                     "scene": {"type": "object", "properties": {"path": {"type": "string", "default": "."}}},
                 }}}}}}]},
}


def gst(name: str = "t1", **spec: object) -> dict:
    body = training(name, namespace=None, claim="pvc", **spec)
    del body["spec"]["scene"]["path"]  # left to the CRD's default
    return body


@pytest.fixture
async def kube(tmp_path):
    async with c.running_cluster(tmp_path / "kubeconfig", crd=CRD) as cl:
        async with aiohttp.ClientSession(cl.url) as http:
            yield cl, http


async def call(http: aiohttp.ClientSession, method: str, path: str, body: object = None,
               headers: dict | None = None) -> tuple[int, dict]:
    async with http.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_kubeconfig_points_at_server(kube, tmp_path):
    cl, http = kube
    config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    assert config["clusters"][0]["cluster"]["server"] == cl.url
    assert config["contexts"][0]["context"]["namespace"] == NS
    status, body = await call(http, "GET", "/api/v1/namespaces")
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == [NS]


@pytest.mark.parametrize("path, plural", [
    ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions"),
    ("/api/v1", "events"),
    ("/apis/batch/v1", "jobs"),
    (f"/apis/{names.GROUP}/{names.VERSION}", names.PLURAL),
])
async def test_discovery_lists_resources_with_verbs(kube, path, plural):
    _, http = kube
    status, body = await call(http, "GET", path)
    entry = next(r for r in body["resources"] if r["name"] == plural)
    assert {"list", "watch"} <= set(entry["verbs"])


async def test_create_sets_metadata_and_defaults_and_drops_status(kube):
    _, http = kube
    status, obj = await call(http, "POST", GST, {**gst(), "status": {"phase": "Hacked"}})
    assert status == 201
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert meta["namespace"] == NS and int(meta["resourceVersion"]) > 0
    assert obj["spec"] == {"scene": {"claimName": "pvc", "path": "."}, "maxSteps": 30000, "dataFactor": 1}
    assert "status" not in obj


async def test_duplicate_create_is_409(kube):
    _, http = kube
    assert (await call(http, "POST", GST, gst()))[0] == 201
    status, body = await call(http, "POST", GST, gst())
    assert status == 409 and body["reason"] == "AlreadyExists"


async def test_generate_name(kube):
    _, http = kube
    status, ev = await call(http, "POST", f"/api/v1/namespaces/{NS}/events",
                            {"metadata": {"generateName": "kopf-event-"}, "message": "hi"})
    assert status == 201 and ev["metadata"]["name"].startswith("kopf-event-")


async def test_status_subresource_semantics_and_generation(kube):
    _, http = kube
    _, obj = await call(http, "POST", GST, gst())
    rv0 = int(obj["metadata"]["resourceVersion"])
    # Main resource: status ignored; a metadata-only change keeps the generation.
    _, obj = await call(http, "PATCH", f"{GST}/t1", {"metadata": {"labels": {"a": "b"}},
                                                    "status": {"phase": "X"}}, MERGE)
    assert "status" not in obj and obj["metadata"]["generation"] == 1
    assert int(obj["metadata"]["resourceVersion"]) > rv0
    # /status: only status changes.
    _, obj = await call(http, "PATCH", f"{GST}/t1/status", {"spec": {"maxSteps": 5},
                                                           "status": {"phase": "Running", "x": 1}}, MERGE)
    assert obj["status"] == {"phase": "Running", "x": 1} and obj["spec"]["maxSteps"] == 30000
    assert obj["metadata"]["generation"] == 1
    # null deletes a key (merge patch); a spec change bumps the generation.
    _, obj = await call(http, "PATCH", f"{GST}/t1/status", {"status": {"x": None}}, MERGE)
    assert obj["status"] == {"phase": "Running"}
    _, obj = await call(http, "PATCH", f"{GST}/t1", {"spec": {"suspend": True}}, MERGE)
    assert obj["metadata"]["generation"] == 2 and obj["status"] == {"phase": "Running"}


async def test_writes_bump_versions_under_the_real_crd(tmp_path):
    """The shipped CRD defaults objects (a copy): the version bumps must land on what is stored.

    kopf compares resourceVersions to tell its own writes from new ones; a status write that kept
    the version made it run a training's whole creation cycle twice."""
    async with c.running_cluster(tmp_path / "kubeconfig") as cl:
        async with aiohttp.ClientSession(cl.url) as http:
            _, obj = await call(http, "POST", GST, gst())
            rv0, gen0 = int(obj["metadata"]["resourceVersion"]), obj["metadata"]["generation"]
            _, obj = await call(http, "PATCH", f"{GST}/t1/status", {"status": {"phase": "Running"}}, MERGE)
            rv1 = int(obj["metadata"]["resourceVersion"])
            assert rv1 > rv0 and obj["metadata"]["generation"] == gen0
            _, obj = await call(http, "PATCH", f"{GST}/t1", {"spec": {"suspend": True}}, MERGE)
            assert int(obj["metadata"]["resourceVersion"]) > rv1 and obj["metadata"]["generation"] == gen0 + 1
            _, stored = await call(http, "GET", f"{GST}/t1")
            assert stored["metadata"] == obj["metadata"]


async def test_json_patch_and_stale_resource_version(kube):
    _, http = kube
    _, obj = await call(http, "POST", GST, gst())
    _, obj2 = await call(http, "PATCH", f"{GST}/t1", [{"op": "add", "path": "/spec/maxSteps", "value": 7}],
                         {"Content-Type": "application/json-patch+json"})
    assert obj2["spec"]["maxSteps"] == 7
    status, _ = await call(http, "PATCH", f"{GST}/t1",
                           {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                            "spec": {"maxSteps": 8}}, MERGE)
    assert status == 409


@pytest.mark.parametrize("selector, expected", [
    ("app=a", ["p1"]),
    ("app!=a", ["p2", "p3"]),
    ("app in (a,b)", ["p1", "p2"]),
    ("app notin (a)", ["p2", "p3"]),
    ("app", ["p1", "p2"]),
    ("!app", ["p3"]),
    ("app=a,tier=gpu", ["p1"]),
    ("app=b,tier=gpu", []),
])
async def test_label_selector_on_list(kube, selector, expected):
    cl, http = kube
    for name, labels in [("p1", {"app": "a", "tier": "gpu"}), ("p2", {"app": "b"}), ("p3", {})]:
        await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": name, "namespace": NS, "labels": labels}})
    _, body = await call(http, "GET", f"{PODS}?labelSelector={selector}")
    assert sorted(i["metadata"]["name"] for i in body["items"]) == expected
    assert body["metadata"]["resourceVersion"]


async def test_watch_filters_by_label_and_streams_changes(kube):
    cl, http = kube
    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        async with http.get(f"{PODS}?watch=true&labelSelector=app=a") as resp:
            async for line in resp.content:
                if line.strip():
                    ev = json.loads(line)
                    seen.append((ev["type"], ev["object"]["metadata"]["name"]))
                    if ev["type"] == "DELETED":
                        return

    # A matching pod from before the watch: once the watch streams it, the watch is live.
    await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": "w", "namespace": NS, "labels": {"app": "a"}}})
    task = asyncio.create_task(watch())
    for _ in range(500):
        if ("ADDED", "w") in seen or task.done():
            break
        await asyncio.sleep(0.01)
    assert seen == [("ADDED", "w")], seen
    await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": "x", "namespace": NS, "labels": {"app": "b"}}})
    await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": "y", "namespace": NS, "labels": {"app": "a"}}})
    await cl.emulator.patch(c.POD_RESOURCE, NS, "y", {"status": {"phase": "Running"}}, subresource="status")
    await cl.emulator.delete(c.POD_RESOURCE, NS, "y")
    await asyncio.wait_for(task, 5)  # y's deletion came after x's creation: x was filtered, not late
    assert seen == [("ADDED", "w"), ("ADDED", "y"), ("MODIFIED", "y"), ("DELETED", "y")]


async def test_finalizers_block_deletion_until_removed(kube):
    _, http = kube
    body = gst()
    body["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    await call(http, "POST", GST, body)
    status, obj = await call(http, "DELETE", f"{GST}/t1")
    assert status == 200 and obj["metadata"]["deletionTimestamp"]
    assert (await call(http, "GET", f"{GST}/t1"))[0] == 200
    await call(http, "PATCH", f"{GST}/t1", {"metadata": {"finalizers": None}}, MERGE)
    assert (await call(http, "GET", f"{GST}/t1"))[0] == 404


async def test_owner_reference_cascade(kube):
    cl, http = kube
    _, owner = await call(http, "POST", GST, gst())
    ref = {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": "t1",
           "uid": owner["metadata"]["uid"], "controller": True}
    _, job = await call(http, "POST", JOBS, {"metadata": {"name": "j", "ownerReferences": [ref]},
                                             "spec": {"template": {"spec": {"containers": []}}}})
    jref = {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job["metadata"]["uid"]}
    await call(http, "POST", PODS, {"metadata": {"name": "p", "ownerReferences": [jref]}})
    await call(http, "POST", PODS, {"metadata": {"name": "other"}})
    await cl.emulator.append_log(NS, "p", "hello")
    await call(http, "DELETE", f"{GST}/t1")
    assert (await call(http, "GET", f"{JOBS}/j"))[0] == 404
    assert (await call(http, "GET", f"{PODS}/p"))[0] == 404
    assert (await call(http, "GET", f"{PODS}/other"))[0] == 200
    assert (NS, "p") not in cl.emulator.pod_logs


@pytest.mark.parametrize("tail, expected", [(None, "a\nb\nc\n"), ("2", "b\nc\n"), ("0", "")])
async def test_pod_log_with_tail_lines(kube, tail, expected):
    cl, http = kube
    await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": "p", "namespace": NS}})
    await cl.emulator.append_log(NS, "p", "a", "b\nc")
    query = f"?container=trainer&tailLines={tail}" if tail else ""
    async with http.get(f"{PODS}/p/log{query}") as resp:
        assert resp.status == 200 and await resp.text() == expected
    async with http.get(f"{PODS}/nope/log") as resp:
        assert resp.status == 404


@pytest.mark.parametrize("follow", ["true", "True", "1"])  # the API server parses it as Go's ParseBool
async def test_pod_log_follow_ends_when_pod_finishes(kube, follow):
    cl, http = kube
    await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": "p", "namespace": NS}})
    await cl.emulator.append_log(NS, "p", "first")

    async def finish() -> None:
        await asyncio.sleep(0.2)
        await cl.emulator.append_log(NS, "p", "second")
        await cl.emulator.patch(c.POD_RESOURCE, NS, "p", {"status": {"phase": "Succeeded"}}, subresource="status")

    task = asyncio.create_task(finish())
    async with http.get(f"{PODS}/p/log?follow={follow}") as resp:
        text = await asyncio.wait_for(resp.text(), 5)
    await task
    assert text == "first\nsecond\n"


@pytest.mark.parametrize("schema, value, expected", [
    ({"properties": {"a": {"default": 1}}}, {}, {"a": 1}),
    ({"properties": {"a": {"default": 1}}}, {"a": 2}, {"a": 2}),
    ({"properties": {"o": {"properties": {"x": {"default": "d"}}}}}, {}, {}),
    ({"properties": {"o": {"properties": {"x": {"default": "d"}}}}}, {"o": {}}, {"o": {"x": "d"}}),
    ({"properties": {"l": {"items": {"properties": {"k": {"default": 0}}}}}}, {"l": [{}, {"k": 3}]},
     {"l": [{"k": 0}, {"k": 3}]}),
])
def test_apply_schema_defaults(schema, value, expected):
    assert c.apply_schema_defaults(schema, value) == expected


def test_spec_changed_ignores_metadata_and_status():
    base = {"metadata": {"a": 1}, "spec": {"x": 1}, "status": {}}
    assert not c.spec_changed(base, {**base, "metadata": {"a": 2}, "status": {"p": 1}})
    assert c.spec_changed(base, {**base, "spec": {"x": 2}})


def test_load_crd_reads_repository_file_when_present():
    crd = c.load_crd()
    if crd is not None:
        assert crd["metadata"]["name"] == names.CRD_NAME


async def test_reactions_added_by_a_test_still_intercept_reads(kube):
    cl, http = kube
    await cl.emulator.create(c.POD_RESOURCE, {"metadata": {"name": "p", "namespace": NS}})
    assert (await call(http, "GET", f"{PODS}/p"))[1]["metadata"]["name"] == "p"
    cl.emulator[f"get {PODS}/p"] << {"intercepted": True}
    assert (await call(http, "GET", f"{PODS}/p"))[1] == {"intercepted": True}


@pytest.mark.parametrize("query", ["watch=true&timeoutSeconds=300.0", "limit=1.5"])
async def test_integer_query_parameters_reject_floats_as_the_api_server_does(kube, query):
    """kube-apiserver parses timeoutSeconds & co. as integers: kopf sent `300.0` from a float
    setting and every watch of the operator failed with this 400 on a real cluster."""
    _, http = kube
    status, body = await call(http, "GET", f"{JOBS}?{query}")
    assert status == 400 and body["reason"] == "BadRequest"
    assert 'strconv.ParseInt: parsing "' in body["message"]
