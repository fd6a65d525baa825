"""spec.podTemplate through the real operator over HTTP: merged with the chart's default template
into the Job it creates; a template that would replace the trainer's own parts fails the training
as InvalidSpec naming the field, and no Job is created."""

from __future__ import annotations

import json

import pytest

from splatops.controller import jobs
from splatops.local import cluster as c

from .conftest import NS, Harness

pytestmark = pytest.mark.timeout(60)

CHART_DEFAULT = {"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}},
                 "imagePullSecrets": [{"name": "registry"}]}


async def test_the_job_carries_the_merged_pod_template(kube: Harness):
    await kube.start_operator(pod_template=json.dumps(CHART_DEFAULT))
    await kube.create("irsa", podTemplate={
        "serviceAccountName": "splat-s3", "env": [{"name": "AWS_REGION", "value": "us-east-1"}],
        "metadata": {"labels": {"team": "vision"}}})
    pod = (await kube.wait_job("irsa"))["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    assert pod["metadata"]["labels"]["team"] == "vision"
    assert pod["spec"]["serviceAccountName"] == "splat-s3" and pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert {"name": "AWS_REGION", "value": "us-east-1"} in pod["spec"]["containers"][0]["env"]


@pytest.mark.parametrize(("template", "field"), [
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/data"}]},
     "spec.podTemplate.volumeMounts[0].mountPath"),
    ({"env": [{"name": "SPLATOPS_SCENE_DIR", "value": "/x"}]}, "spec.podTemplate.env[0].name"),
])
async def test_a_colliding_pod_template_fails_as_invalid_spec_naming_the_field(kube: Harness, template, field):
    await kube.start_operator()
    await kube.create("collide", podTemplate=template)
    status = await kube.wait_phase("collide", "Failed")
    assert status["reason"] == "InvalidSpec" and field in status["message"], status
    assert kube.emulator.read(c.JOB_RESOURCE, NS, jobs.job_name("collide")) is None
