"""Slot counting under the operator's cap (queue.slots): a pure function of the Jobs in kopf's
index, the trainings that may wait, and the trainings we just admitted. Table-driven."""

from __future__ import annotations

import pytest

from splatops.controller import queue

T = "2026-01-01T00:00:00Z"
A, B, C = ("default", "a"), ("default", "b"), ("default", "c")


def cand(key: tuple[str, str], phase: str | None = None, held: bool = False, job_suspended: bool | None = None,
         seen: int = 0) -> queue.Candidate:
    return queue.Candidate(queue.Waiting(T, seen, *key), phase=phase, held=held, job_suspended=job_suspended)


SLOT_TABLE = [
    # (case, Jobs in the index, candidates, admitted, running, waiting [(name, has_job)], settled)
    ("nothing", [], [], set(), 0, [], set()),
    ("a running Job counts; the index shows it", [queue.SlotJob(A)], [], {A}, 1, [], {A}),
    ("a finished Job frees its slot", [queue.SlotJob(A, finished=True)], [], {A}, 0, [], {A}),
    ("a finished suspended Job too", [queue.SlotJob(A, suspended=True, finished=True)], [], set(), 0, [], {A}),
    ("just admitted, the watch still shows it suspended", [queue.SlotJob(A, suspended=True)], [], {A}, 1, [], set()),
    ("suspended and not admitted: waits", [queue.SlotJob(A, suspended=True)],
     [cand(A, "Queued", job_suspended=True)], set(), 0, [("a", True)], set()),
    ("created running, no Job in the index yet", [], [], {A}, 1, [], set()),
    ("Kueue's Jobs never count", [queue.SlotJob(A, kueue=True)], [], set(), 0, [], set()),
    ("Kueue's Job seen: an admitted key is not counted twice", [queue.SlotJob(A, kueue=True)], [], {A}, 0, [], set()),
    ("not handled yet: reserves a slot, no Job to unsuspend", [], [cand(A)], set(), 0, [("a", False)], set()),
    ("handled without a Job (OutputBusy, a retry): not in line", [], [cand(A, "Pending")], set(), 0, [], set()),
    ("suspended or Kueue's by spec: not in line", [queue.SlotJob(A, suspended=True)],
     [cand(A, "Suspended", held=True, job_suspended=True)], set(), 0, [], set()),
    ("terminal: not in line", [queue.SlotJob(A, suspended=True)],
     [cand(A, "Failed", job_suspended=True)], set(), 0, [], set()),
    ("its Job runs: not in line", [queue.SlotJob(A)], [cand(A, "Running", job_suspended=False)], set(), 1, [], {A}),
    ("admitted, still suspended in the index: counted, not in line", [queue.SlotJob(A, suspended=True)],
     [cand(A, "Queued", job_suspended=True)], {A}, 1, [], set()),
    ("a mix", [queue.SlotJob(A), queue.SlotJob(B, suspended=True), queue.SlotJob(C, kueue=True, suspended=True)],
     [cand(A, "Running", job_suspended=False), cand(B, "Queued", job_suspended=True, seen=1),
      cand(C, "Queued", held=True, job_suspended=True), cand(("default", "d"), seen=3)],
     {("default", "e")}, 2, [("b", True), ("d", False)], {A}),
]


@pytest.mark.parametrize(("case", "jobs", "candidates", "admitted", "running", "waiting", "settled"), SLOT_TABLE,
                         ids=[row[0] for row in SLOT_TABLE])
def test_slots(case: str, jobs: list[queue.SlotJob], candidates: list[queue.Candidate], admitted: set[tuple[str, str]],
               running: int, waiting: list[tuple[str, bool]], settled: set[tuple[str, str]]) -> None:
    before = set(admitted)
    counted = queue.slots(jobs, candidates, frozenset(admitted))
    assert counted.running == running
    assert [(w.name, w.has_job) for w in sorted(counted.waiting)] == waiting
    assert counted.settled == settled
    assert admitted == before  # pure: the caller settles


def test_the_caller_settles_what_the_index_shows() -> None:
    """admission.slots only reads the runtime; Runtime.settle is the one write."""
    from op_fixtures import job_for, training

    from splatops.controller.handlers.admission import slots
    from splatops.controller.handlers.state import Indices, Runtime
    from splatops.controller.settings import Settings

    rt = Runtime(settings=Settings(max_concurrent=1))
    body = training("a")
    job = job_for(body, rt.settings)  # created running
    rt.state(A).admitted = True
    rt.job_owner[("default", job["metadata"]["name"])] = "a"
    idx = Indices(gsts={A: [body]}, jobs={("default", job["metadata"]["name"]): [job]}, pods={})  # type: ignore[arg-type]
    counted = slots(rt, idx)
    assert (counted.running, counted.settled) == (1, {A}) and rt.admitted() == {A}
    rt.settle(counted.settled)
    assert rt.admitted() == frozenset() and slots(rt, idx).running == 1  # the index counts it now


def test_forgetting_a_training_leaves_nothing_of_it() -> None:
    """All the per-training bookkeeping lives in one TrainingState: deleting the training drops it
    whole, and no other table of the runtime still holds its key."""
    import dataclasses

    from op_fixtures import training

    from splatops.controller.handlers.state import Blocked, Runtime
    from splatops.controller.settings import Settings

    rt = Runtime(settings=Settings())
    body = training("a")
    assert rt.location(A, body) is not None  # parsed, and filed under its output directory
    rt.remember(A, {"phase": "Pending"})
    st = rt.state(A)
    st.admitted = st.job_created = True
    st.job_blocked, st.kueue_seen, st.last_progress_step = ("JobNameTaken", "held"), (0.0, None), 10
    st.retired_jobs.add("uid-old-job")
    rt.outputs.blocked[A] = Blocked("b", "waiting for b")
    rt.forget(A)
    assert A not in rt.trainings and rt.admitted() == frozenset()
    for owner in (rt, rt.outputs):
        for field in dataclasses.fields(owner):
            table = getattr(owner, field.name)
            if isinstance(table, (dict, set)):
                assert A not in table, field.name
            if isinstance(table, dict):
                assert not any(isinstance(v, set) and A in v for v in table.values()), field.name
