"""Register every kopf handler for one operator run, bound to its settings and runtime state."""

from __future__ import annotations

import contextlib
import dataclasses
import copy
import functools
import time
from typing import Any, Awaitable, Callable, Mapping

import kopf
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from splatops import contract, names
from splatops.api.models import Phase, parse_spec
from splatops.controller import jobs, kube, metrics, queue, status
from splatops.controller.handlers.state import Key, Runtime, latest
from splatops.controller.settings import Settings
from splatops.controller.timeutil import format_time, parse_time

GST = (names.GROUP, names.VERSION, names.PLURAL)
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# Failures the operator decides itself while the Job would wait forever: stop the pod too.
_OPERATOR_DECIDED = (contract.Reason.IMAGE_PULL.value, contract.Reason.UNSCHEDULABLE.value)


def _counted(handler: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Count a handler's exceptions in splatops_reconcile_errors_total, then re-raise for kopf."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception:
                metrics.RECONCILE_ERRORS.labels(handler).inc()
                raise

        return inner

    return wrap


def _finished(job: Mapping[str, Any]) -> bool:
    return bool(status.failures.job_condition(job, "Complete") or status.failures.job_condition(job, "Failed"))


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")})


def _event_body(training: Mapping[str, Any]) -> dict[str, Any]:
    meta = training.get("metadata") or {}
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }


def register(registry: kopf.OperatorRegistry, settings: Settings, rt: Runtime | None = None) -> Runtime:
    """Attach all handlers to `registry`; returns the runtime state they share."""
    rt = rt or Runtime(settings=settings)
    on = dict(registry=registry)

    # ------------------------------------------------------------------ indices (filled before handlers run)

    @kopf.index(*GST, id="gst_index", **on)
    def gst_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
        snap = _snapshot(body)
        metrics.PHASES.set(namespace, name, (snap.get("status") or {}).get("phase"))
        return {(namespace, name): snap}

    @kopf.index("batch", "v1", "jobs", labels=MANAGED, id="job_index", **on)
    def job_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("kind") == names.KIND:
                rt.job_owner[(namespace, name)] = ref.get("name")
        return {(namespace, name): _snapshot(body)}

    @kopf.index("", "v1", "pods", labels=MANAGED, id="pod_index", **on)
    def pod_index(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Key, Any]:
        job = next((labels[k] for k in JOB_NAME_LABELS if labels.get(k)), None)
        if job is None:
            return {}
        return {(namespace, job): _snapshot(body)}

    # ------------------------------------------------------------------ helpers over the indices

    def training_of(key: Key, gsts: kopf.Index) -> dict[str, Any] | None:
        snap = latest(gsts.get(key))
        return dict(snap) if snap is not None else None

    def current_status(key: Key, training: Mapping[str, Any]) -> dict[str, Any]:
        return {**(training.get("status") or {}), **rt.written.get(key, {})}

    def slots(gsts: kopf.Index, job_idx: kopf.Index) -> tuple[int, list[queue.Waiting]]:
        """(running Jobs under the cap, trainings waiting for a slot) from the indices."""
        running = 0
        seen: set[Key] = set()
        for job_key, store in job_idx.items():
            job = latest(store)
            owner = rt.job_owner.get(job_key)
            if job is None or owner is None:
                continue
            key = (job_key[0], owner)
            seen.add(key)
            if names.KUEUE_QUEUE_LABEL in (job.get("metadata", {}).get("labels") or {}):
                continue  # Kueue admits these, not us
            finished = status.failures.job_condition(job, "Complete") or status.failures.job_condition(job, "Failed")
            if finished:
                rt.admitted.discard(key)
                continue
            if (job.get("spec") or {}).get("suspend"):
                if key in rt.admitted:
                    running += 1  # we just admitted it; the watch has not caught up
                continue
            rt.admitted.discard(key)
            running += 1
        running += len(rt.admitted - seen)  # created unsuspended, not yet seen
        waiting = []
        for key, store in gsts.items():
            training = latest(store)
            if training is None or key in rt.admitted:
                continue
            spec = training.get("spec") or {}
            job = latest(job_idx.get((key[0], jobs.job_name(key[1]))))
            if spec.get("suspend") or spec.get("queueName") or job is None:
                continue
            if current_status(key, training).get("phase") in TERMINAL or not (job.get("spec") or {}).get("suspend"):
                continue
            created = str(training.get("metadata", {}).get("creationTimestamp") or "")
            waiting.append(queue.Waiting(created, key[0], key[1]))
        return running, waiting

    async def reconcile(key: Key, gsts: kopf.Index, job_idx: kopf.Index, pod_idx: kopf.Index,
                        *, job: Mapping[str, Any] | None = None, queued: bool = False) -> dict[str, Any] | None:
        """Write the status the cluster implies (only the changed fields; nothing if unchanged)."""
        async with rt.lock(key):
            training = training_of(key, gsts)
            if training is None:
                return None
            ns, name = key
            jname = jobs.job_name(name)
            job = job if job is not None else latest(job_idx.get((ns, jname)))
            pods = tuple(pod_idx.get((ns, jname), ()))
            current = current_status(key, training)
            if job is not None and current.get("phase") not in TERMINAL and _finished(job) \
                    and not any(status.failures.terminated_state(p) for p in pods):
                # The Job's verdict can outrun the pod watch; the pod's termination message
                # carries the real reason, so read the pods once rather than guess.
                pods = tuple(await rt.api().job_pods(ns, jname)) or pods
            spec = training.get("spec") or {}
            try:
                model_path = jobs.model_path(parse_spec(spec))
            except ValidationError:
                model_path = None
            obs = status.Observed(
                spec=spec, status=current, generation=training["metadata"].get("generation"), job=job, pods=pods,
                queued_by_operator=queued, now=time.time(), unschedulable_grace=settings.unschedulable_grace,
                model_path=model_path,
            )
            desired = status.desired_status(obs)
            patch = status.status_patch(current, desired)
            if not patch:
                return desired
            await rt.api().patch_status(ns, name, patch)
            rt.written[key] = {**rt.written.get(key, {}), **patch}
            metrics.STATUS_WRITES.labels("phase").inc()
            if status.phase_changed(current, desired):
                on_phase_change(training, current, desired)
                if desired["phase"] == Phase.FAILED.value and desired.get("reason") in _OPERATOR_DECIDED and job is not None \
                        and not (job.get("spec") or {}).get("suspend"):
                    # The Job would wait forever; suspending removes the stuck pod but keeps the Job for inspection.
                    await rt.api().patch_job(ns, jname, {"spec": {"suspend": True}})
            return desired

    def on_phase_change(training: Mapping[str, Any], current: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
        ns, name = training["metadata"]["namespace"], training["metadata"]["name"]
        phase, reason, message = desired["phase"], desired.get("reason") or "", desired.get("message") or ""
        metrics.PHASES.set(ns, name, phase)
        kind = "Warning" if phase == Phase.FAILED.value else "Normal"
        kopf.event(_event_body(training), type=kind, reason=phase, message=f"{reason}: {message}" if reason else message)
        started = parse_time(desired.get("startTime"))
        finished = parse_time(desired.get("completionTime"))
        duration = (finished - started) if started is not None and finished is not None else None
        if phase == Phase.SUCCEEDED.value:
            metrics.SUCCEEDED.labels(ns).inc()
            if duration is not None:
                metrics.DURATION.labels("succeeded").observe(max(0.0, duration))
        elif phase == Phase.FAILED.value:
            metrics.FAILED.labels(ns, reason or "Unknown").inc()
            if duration is not None:
                metrics.DURATION.labels("failed").observe(max(0.0, duration))

    def admitted_metrics(training: Mapping[str, Any]) -> None:
        ns = training["metadata"]["namespace"]
        metrics.STARTED.labels(ns).inc()
        created = parse_time(training["metadata"].get("creationTimestamp"))
        if created is not None:
            metrics.QUEUE_WAIT.observe(max(0.0, time.time() - created))

    async def admit_waiting(gsts: kopf.Index, job_idx: kopf.Index, pod_idx: kopf.Index) -> None:
        """Unsuspend the oldest operator-queued Jobs while slots are free."""
        admitted: list[Key] = []
        async with rt.admission_lock:
            running, waiting = slots(gsts, job_idx)
            for item in queue.admit(running, waiting, settings.max_concurrent):
                key = (item.namespace, item.name)
                await rt.api().patch_job(item.namespace, jobs.job_name(item.name), {"spec": {"suspend": False}})
                rt.admitted.add(key)
                training = training_of(key, gsts)
                if training is not None:
                    admitted_metrics(training)
                admitted.append(key)
        for key in admitted:
            await reconcile(key, gsts, job_idx, pod_idx)

    # ------------------------------------------------------------------ lifecycle

    @kopf.on.login(id="login", **on)
    def login(**kwargs: Any) -> Any:
        """In-cluster service account first, else KUBECONFIG / ~/.kube/config (a fresh registry has no default)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="connect", **on)
    async def connect(**_: Any) -> None:
        if rt.kube is None:
            rt.kube = await kube.connect()

    @kopf.on.cleanup(id="disconnect", **on)
    async def disconnect(**_: Any) -> None:
        if rt.kube is not None:
            await rt.kube.close()
            rt.kube = None

    # ------------------------------------------------------------------ the training resource

    @kopf.on.resume(*GST, id="ensure_job", **on)
    @kopf.on.create(*GST, id="ensure_job", **on)
    @_counted("ensure_job")
    async def ensure_job(body: kopf.Body, namespace: str, name: str, logger: Any, gst_index: kopf.Index,
                         job_index: kopf.Index, pod_index: kopf.Index, **_: Any) -> None:
        """Validate, then create the one Job (suspended when it must queue); idempotent."""
        key: Key = (namespace, name)
        training = training_of(key, gst_index) or _snapshot(body)
        if current_status(key, training).get("phase") in TERMINAL:
            return
        try:
            spec = parse_spec(dict(body.get("spec") or {}))
        except ValidationError as exc:
            await fail_invalid(key, training, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
            return
        jname = jobs.job_name(name)
        existing = latest(job_index.get((namespace, jname)))
        queued = False
        if existing is None:
            capped = settings.max_concurrent > 0 and not (spec.suspend or spec.queue_name)
            # Only admission under a cap needs serialising; uncapped creates run concurrently.
            async with rt.admission_lock if capped else contextlib.nullcontext():
                suspend = bool(spec.suspend or spec.queue_name)
                others: list[queue.Waiting] = []
                if capped:
                    running, waiting = slots(gst_index, job_index)
                    me = queue.Waiting(str(body["metadata"].get("creationTimestamp") or format_time(time.time())), namespace, name)
                    admitted = queue.admit(running, [w for w in waiting if (w.namespace, w.name) != key] + [me], settings.max_concurrent)
                    suspend = queued = me not in admitted
                    others = [w for w in admitted if w != me]
                manifest = jobs.build_job(body, settings, suspend=suspend)
                existing = await create_or_adopt(namespace, manifest, body["metadata"]["uid"], logger)
                if not (existing.get("spec") or {}).get("suspend"):
                    rt.admitted.add(key)
                    admitted_metrics(training)
                    logger.info(f"Created Job {jname}.")
                else:
                    logger.info(f"Created Job {jname} suspended ({'Kueue' if spec.queue_name else 'suspend' if spec.suspend else 'queued'}).")
            if others:
                await admit_waiting(gst_index, job_index, pod_index)
        await reconcile(key, gst_index, job_index, pod_index, job=existing, queued=queued)

    async def create_or_adopt(namespace: str, manifest: dict[str, Any], uid: str, logger: Any) -> dict[str, Any]:
        """Create the Job; a 409 means it exists: use it if it is ours, never make a second one."""
        jname = manifest["metadata"]["name"]
        try:
            return await rt.api().create_job(namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                if exc.status in (400, 422):
                    raise kopf.PermanentError(f"The API server rejected Job {jname}: {exc.reason} {exc.body}") from exc
                raise
        existing = await rt.api().read_job(namespace, jname)
        owners = [r.get("uid") for r in existing.get("metadata", {}).get("ownerReferences") or []]
        if uid not in owners:
            # A Job of a deleted namesake is still being garbage-collected: wait for it to go.
            raise kopf.TemporaryError(f"Job {jname} exists but belongs to another owner {owners}; waiting for its deletion.", delay=10)
        logger.info(f"Job {jname} already exists; adopting it (no second Job).")
        return existing

    async def fail_invalid(key: Key, training: Mapping[str, Any], detail: str) -> None:
        ns, name = key
        now = time.time()
        message = f"Invalid spec: {detail}"
        desired = {
            "phase": Phase.FAILED.value, "reason": contract.Reason.INVALID_SPEC.value, "message": message,
            "completionTime": format_time(now), "observedGeneration": training["metadata"].get("generation"),
        }
        desired["conditions"] = status.conditions(None, Phase.FAILED, desired["reason"], message, now, desired["observedGeneration"])
        current = current_status(key, training)
        await rt.api().patch_status(ns, name, desired)
        rt.written[key] = {**rt.written.get(key, {}), **desired}
        on_phase_change(training, current, desired)

    @kopf.on.field(*GST, field="spec.suspend", id="suspend", **on)
    @_counted("suspend")
    async def suspend_changed(old: Any, new: Any, namespace: str, name: str, logger: Any, gst_index: kopf.Index,
                              job_index: kopf.Index, pod_index: kopf.Index, **_: Any) -> None:
        key: Key = (namespace, name)
        jname = jobs.job_name(name)
        job = latest(job_index.get((namespace, jname)))
        training = training_of(key, gst_index)
        if old is None or job is None or training is None or current_status(key, training).get("phase") in TERMINAL:
            return  # creation: ensure_job builds the Job with the right suspend already
        if new:
            async with rt.admission_lock:
                rt.admitted.discard(key)
                job = await rt.api().patch_job(namespace, jname, {"spec": {"suspend": True}})
            logger.info(f"Suspended Job {jname}.")
        elif not (training.get("spec") or {}).get("queueName"):
            await admit_waiting(gst_index, job_index, pod_index)
            job = None
        await reconcile(key, gst_index, job_index, pod_index, job=job)

    @kopf.on.event(*GST, id="training_event", **on)
    def training_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
        if type == "DELETED":  # the Job and pods go by garbage collection; the PVC is never touched
            rt.forget((namespace, name))
            metrics.forget_training(namespace, name)

    # ------------------------------------------------------------------ children: Jobs and pods

    @kopf.on.event("batch", "v1", "jobs", labels=MANAGED, id="job_event", **on)
    @_counted("job_event")
    async def job_event(type: str | None, body: kopf.Body, namespace: str, name: str, gst_index: kopf.Index,
                        job_index: kopf.Index, pod_index: kopf.Index, **_: Any) -> None:
        owner = rt.job_owner.get((namespace, name))
        if owner is not None:
            await reconcile((namespace, owner), gst_index, job_index, pod_index)
        finished = status.failures.job_condition(body, "Complete") or status.failures.job_condition(body, "Failed")
        if type == "DELETED":
            rt.job_owner.pop((namespace, name), None)
        if settings.max_concurrent > 0 and (type == "DELETED" or finished or (body.get("spec") or {}).get("suspend")):
            await admit_waiting(gst_index, job_index, pod_index)

    @kopf.on.event("", "v1", "pods", labels=MANAGED, id="pod_event", **on)
    @_counted("pod_event")
    async def pod_event(labels: Mapping[str, str], namespace: str, gst_index: kopf.Index, job_index: kopf.Index,
                        pod_index: kopf.Index, **_: Any) -> None:
        job = next((labels[k] for k in JOB_NAME_LABELS if labels.get(k)), None)
        owner = rt.job_owner.get((namespace, job)) if job else None
        if owner is None:
            owner = labels.get(names.LABEL_TRAINING)
        if owner is not None:
            await reconcile((namespace, owner), gst_index, job_index, pod_index)

    # ------------------------------------------------------------------ the timer: progress, catch-up, queue

    def _active(status: Mapping[str, Any], **_: Any) -> bool:
        return status.get("phase") not in TERMINAL

    @kopf.timer(*GST, interval=settings.progress_interval, initial_delay=settings.progress_interval, when=_active, id="progress", **on)
    @_counted("progress")
    async def poll(namespace: str, name: str, logger: Any, gst_index: kopf.Index, job_index: kopf.Index,
                   pod_index: kopf.Index, **_: Any) -> None:
        key: Key = (namespace, name)
        training = training_of(key, gst_index)
        if training is None:
            return
        if latest(job_index.get((namespace, jobs.job_name(name)))) is None:
            return  # ensure_job creates the Job and writes the first status
        if settings.max_concurrent > 0 and current_status(key, training).get("phase") == Phase.QUEUED.value:
            await admit_waiting(gst_index, job_index, pod_index)
        desired = await reconcile(key, gst_index, job_index, pod_index)
        if not desired or desired.get("phase") != Phase.RUNNING.value:
            return
        pod = status.running_pod(pod_index.get((namespace, jobs.job_name(name)), ()))
        if pod is None:
            return
        now = time.time()
        if not status.should_write_status(rt.last_progress_write.get(key), now, settings.status_min_interval):
            return
        try:
            text = await rt.api().log_tail(namespace, pod["metadata"]["name"], settings.log_tail_lines)
        except ApiException as exc:
            if exc.status in (400, 404):  # the container is not up yet or the pod just went away
                logger.debug(f"No log yet for {pod['metadata']['name']}: {exc.reason}")
                return
            raise
        progress = contract.last_progress(text)
        if progress is None or rt.last_progress_step.get(key) == progress.step:
            return
        fields = status.progress_status(progress, now)
        await rt.api().patch_status(namespace, name, {"progress": fields})
        rt.written[key] = {**rt.written.get(key, {}), "progress": fields}
        rt.last_progress_write[key] = now
        rt.last_progress_step[key] = progress.step
        metrics.STATUS_WRITES.labels("progress").inc()
        metrics.record_progress(namespace, name, fields, now)

    _timer_without_finalizer(registry, "progress")
    return rt


def _timer_without_finalizer(registry: kopf.OperatorRegistry, handler_id: str) -> None:
    """kopf gives every timer a finalizer. Ours needs none: it only reads and writes status, and
    nothing must be cleaned up on deletion (owner references do that). Without it, deleting a
    training never waits for a running operator (Argo CD prunes at once) and creation skips a
    patch round trip. kopf stops the timer when it sees the deletion event.
    """
    handlers = registry._spawning._handlers  # no public API to opt a timer out of its finalizer
    for i, handler in enumerate(handlers):
        if handler.id == handler_id:
            handlers[i] = dataclasses.replace(handler, requires_finalizer=False)
