"""Which replica exports the per-training metrics: the activity state kopf peering implies, and
OperatorMetrics hiding and forgetting them while paused (the running operators:
tests/operator_integration/test_peering.py)."""

from __future__ import annotations

import kopf
import pytest

from splatops.controller import metric_names as mn
from splatops.controller import metrics
from splatops.controller.handlers import activity, register
from splatops.controller.handlers.registration import without_finalizer
from splatops.controller.handlers.state import Runtime
from splatops.controller.settings import Settings

R = kopf.DaemonStoppingReason
PER_TRAINING = {mn.TRAININGS, mn.TRAINING_PHASE, mn.PROGRESS_RATIO, mn.STEP, mn.LAST_PROGRESS, mn.LOSS, mn.PSNR}


def exposed(view: metrics.OperatorMetrics) -> tuple[float, list[tuple[str, dict[str, str], float]]]:
    """(splatops_operator_active, the per-training samples) as collected at scrape time."""
    samples = [(s.name, s.labels, s.value) for family in view.collect() for s in family.samples]
    active = next(v for name, _, v in samples if name == mn.OPERATOR_ACTIVE)
    return active, [s for s in samples if s[0] in PER_TRAINING]


def fill(view: metrics.OperatorMetrics) -> None:
    view.set_phase("splats", "fox", "Running")
    view.record_progress("splats", "fox", {"percent": 50.0, "step": 150, "loss": 0.02, "psnr": 28.0}, now=1000.0)


def test_an_active_operator_exports_its_trainings() -> None:
    view = metrics.OperatorMetrics(active=True)
    fill(view)
    active, series = exposed(view)
    assert active == 1
    assert {name for name, _, _ in series} == PER_TRAINING
    assert (mn.STEP, {"namespace": "splats", "name": "fox"}, 150.0) in series


def test_a_paused_operator_exports_only_that_it_is_paused_and_forgets_what_it_saw() -> None:
    view = metrics.OperatorMetrics(active=True)
    fill(view)
    view.set_active(False)
    assert exposed(view) == (0, [])
    fill(view)  # a handler finishing an event that arrived just before the pause
    assert exposed(view) == (0, [])
    view.forget_training("splats", "fox")
    # Resumed: nothing from before the pause comes back; kopf's re-list fills the view again.
    view.set_active(True)
    assert exposed(view) == (1, [])
    view.set_phase("splats", "lego", None)
    assert (mn.TRAINING_PHASE, {"namespace": "splats", "name": "lego", "phase": "Pending"}, 1.0) in exposed(view)[1]


def test_a_new_operator_is_inactive_until_kopf_starts_it_and_its_families_are_declared() -> None:
    view = metrics.OperatorMetrics()
    assert exposed(view) == (0, [])
    assert {family.name for family in view.describe()} == PER_TRAINING | {mn.OPERATOR_ACTIVE}
    assert PER_TRAINING | {mn.OPERATOR_ACTIVE} <= metrics.exported_names()


@pytest.mark.parametrize(
    ("settings", "plural"),
    [
        (Settings(standalone=True), None),  # kopf never pauses: no daemon
        (Settings(), "clusterkopfpeerings"),
        (Settings(peering_mandatory=True), "clusterkopfpeerings"),
        (Settings(namespaces=["a", "b"], peering_mandatory=True), "kopfpeerings"),
    ],
)
def test_the_peering_daemon_watches_the_peering_kind_kopf_reads_and_adds_no_finalizer(
        settings: Settings, plural: str | None) -> None:
    assert activity.peering_plural(settings) == plural
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    # kopf private API (registry._spawning): pinned kopf==1.45.2 in pyproject.toml
    daemons = [h for h in registry._spawning.get_all_handlers() if h.id == "peering"]
    if plural is None:
        assert daemons == []
    else:
        (daemon,) = daemons
        assert daemon.selector.plural == plural and daemon.requires_finalizer is False


def test_without_finalizer_refuses_an_unknown_id() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, Settings())
    with pytest.raises(LookupError, match="peering/metadata.name"):
        without_finalizer(registry, "peering/metadata.name")


def test_the_daemon_follows_only_our_peering_object() -> None:
    settings = Settings(peering_name="splatops-ha")
    assert activity.is_ours(settings, name="splatops-ha")
    assert not activity.is_ours(settings, name="someone-else")


def test_kopf_starts_paused_only_with_mandatory_peering() -> None:
    assert activity.active_at_startup(Settings(standalone=True)) is True
    assert activity.active_at_startup(Settings()) is True
    assert activity.active_at_startup(Settings(peering_mandatory=True)) is False


@pytest.mark.parametrize(
    ("reason", "before", "after"),
    [
        (R.OPERATOR_PAUSING, True, False),
        (R.OPERATOR_EXITING, True, False),
        (R.OPERATOR_PAUSING | R.DAEMON_SIGNALLED, True, False),
        (R.RESOURCE_DELETED, True, True),  # the peering object re-created: kopf does not pause
        (R.FILTERS_MISMATCH, True, True),
        (R.RESOURCE_DELETED, False, False),
        (None, True, True),
    ],
)
def test_the_state_after_the_daemon_stops(reason: kopf.DaemonStoppingReason | None, before: bool, after: bool) -> None:
    assert activity.active_after(reason, before) is after


async def test_pausing_also_forgets_the_last_progress_read() -> None:
    rt = Runtime(settings=Settings(peering_mandatory=True))
    await activity.started(rt)
    assert rt.metrics.active is False
    activity.set_active(rt, True)
    rt.state(("splats", "fox")).last_progress_step = 150
    activity.set_active(rt, False)
    assert rt.trainings[("splats", "fox")].last_progress_step is None and rt.metrics.active is False
