"""`splatops local`'s stand-in for nodes: runs each Job's trainer container as a local process.

It watches Jobs in the emulator (in-process listener, no polling), plays the Job controller through
`SimCluster` (pods, Job conditions, podFailurePolicy) and acts as the kubelet: the trainer runs with
the container's env, the PVC mount mapped to a local directory, stdout served as the pod log, the
termination message read from a file, the exit code put into the pod status. A suspended or
deleted Job's process gets SIGTERM (the trainer checkpoints), then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from splatops import contract, names
from splatops.local.cluster import JOB_RESOURCE, POD_RESOURCE, SplatopsEmulator
from splatops.local.kubelet import SimCluster

log = logging.getLogger(__name__)

FALLBACK_LOG_LINES = 80  # terminationMessagePolicy FallbackToLogsOnError: the kubelet's tail
FALLBACK_LOG_BYTES = 2048


# --- Pure mapping: container -> local process ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    argv: list[str]
    env: dict[str, str]
    termination_log: pathlib.Path


def default_trainer_argv() -> list[str]:
    """The trainer image's entrypoint, from this environment (the venv's console script)."""
    beside = pathlib.Path(sys.executable).with_name("splatops-train")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("splatops-train")
    return [found] if found else [sys.executable, "-m", "splatops_trainer"]


def mount_map(pod_spec: Mapping[str, Any], container: Mapping[str, Any],
              claims: Mapping[str, os.PathLike[str] | str]) -> dict[str, pathlib.Path]:
    """{mountPath: local dir} for each of the container's PVC mounts whose claim we map."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    result: dict[str, pathlib.Path] = {}
    for mount in container.get("volumeMounts") or []:
        claim = (volumes.get(mount["name"], {}).get("persistentVolumeClaim") or {}).get("claimName")
        if claim is None:
            continue
        if claim not in claims:
            raise LookupError(f"PVC {claim!r} has no local directory; pass --volume {claim}=DIR")
        local = pathlib.Path(claims[claim]).resolve()
        sub = mount.get("subPath")
        result[mount["mountPath"].rstrip("/") or "/"] = local / sub if sub else local
    return result


def rewrite_path(value: str, mounts: Mapping[str, pathlib.Path]) -> str:
    """Map a path inside the pod (`/data/scenes/x`) to the local directory that backs it."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path + "/"):
            rest = value[len(mount_path):].lstrip("/")
            return str(mounts[mount_path] / rest) if rest else str(mounts[mount_path])
    return value


# The container points these at its /tmp emptyDir (read-only root, no home); a local process
# keeps the host's, so caches such as gsplat's compiled extension survive between runs.
_HOST_OWNED_ENV = frozenset({"HOME", "XDG_CACHE_HOME"})


def process_spec(pod: Mapping[str, Any], claims: Mapping[str, os.PathLike[str] | str],
                 workdir: pathlib.Path, *, base_env: Mapping[str, str] | None = None,
                 env_overrides: Mapping[str, str] | None = None) -> ProcessSpec:
    """How to run the pod's trainer container here: argv, env (paths mapped), termination file."""
    spec = pod["spec"]
    container = next((c for c in spec["containers"] if c.get("name") == names.TRAINER_CONTAINER),
                     spec["containers"][0])
    mounts = mount_map(spec, container, claims)
    argv = [*(container.get("command") or default_trainer_argv()), *(container.get("args") or [])]
    argv = [rewrite_path(a, mounts) for a in argv]
    termination = workdir / f"{pod['metadata']['name']}.termination-log"
    env = dict(base_env if base_env is not None else os.environ)
    for item in container.get("env") or []:
        if "value" in item and item["name"] not in _HOST_OWNED_ENV:
            env[item["name"]] = rewrite_path(str(item["value"]), mounts)
    env[contract.ENV_TERMINATION_LOG] = str(termination)
    env.update(env_overrides or {})
    return ProcessSpec(argv=argv, env=env, termination_log=termination)


def termination_message(path: pathlib.Path, exit_code: int, log_lines: list[str]) -> str:
    """What the kubelet reports: the file (capped), else on error the log's tail (fallback policy)."""
    text = ""
    if path.is_file():
        text = path.read_bytes()[: contract.TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    if not text.strip() and exit_code != 0:
        text = "\n".join(log_lines[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
    return text


def exit_code_of(returncode: int) -> int:
    """A process killed by signal N exits 128+N in a container."""
    return 128 - returncode if returncode < 0 else returncode


async def stop_process_group(process: asyncio.subprocess.Process, task: asyncio.Task[None], grace: float) -> None:
    """As the kubelet stops a container: SIGTERM to the process group, then SIGKILL after `grace`
    seconds; returns when `task` (which reaps the process) has ended."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await task


# --- The executor ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Running:
    job: str
    process: asyncio.subprocess.Process
    task: asyncio.Task[None]
    stopping: bool = False


class LocalExecutor:
    """Runs Jobs of one namespace of a `SplatopsEmulator` as local processes.

    `claims` maps PVC claim names to local directories. `env_overrides` wins over the container's
    env (e.g. `{"SPLATOPS_DEVICE": "cpu"}` on a machine without a GPU). `on_output(pod, line)`
    sees every line the trainer prints.
    """

    def __init__(self, emulator: SplatopsEmulator, claims: Mapping[str, os.PathLike[str] | str], *,
                 namespace: str = "default", env_overrides: Mapping[str, str] | None = None,
                 on_output: Callable[[str, str], None] | None = None,
                 grace_period: float = 30.0, workdir: pathlib.Path | None = None) -> None:
        self.emulator = emulator
        self.sim = SimCluster(emulator, namespace)
        self.namespace = namespace
        self.claims = dict(claims)
        self.env_overrides = dict(env_overrides or {})
        self.on_output = on_output
        self.grace_period = grace_period
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._events: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        self._generations: dict[str, int] = {}
        self._running: dict[str, _Running] = {}  # pod name -> process
        self._loop_task: asyncio.Task[None] | None = None
        self.errors: list[str] = []  # problems starting trainers (shown by `splatops local`)

    async def __aenter__(self) -> LocalExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="splatops-executor-")
            self._workdir = pathlib.Path(self._tmp.name)
        self._workdir.mkdir(parents=True, exist_ok=True)
        self.emulator.listeners.append(self._on_event)
        for job in self.sim.jobs():  # Jobs created before we started
            self._events.put_nowait((JOB_RESOURCE, "ADDED", job))
        self._loop_task = asyncio.create_task(self._loop(), name="splatops-executor")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.emulator.listeners.remove(self._on_event)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await asyncio.gather(*(self._kill(pod) for pod in list(self._running)))
        if self._tmp is not None:
            self._tmp.cleanup()

    def _on_event(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        if resource in (JOB_RESOURCE, POD_RESOURCE) and obj["metadata"].get("namespace") == self.namespace:
            self._events.put_nowait((resource, kind, obj))

    async def _loop(self) -> None:
        while True:
            resource, kind, obj = await self._events.get()
            try:
                await self._handle(resource, kind, obj)
            except Exception as exc:  # noqa: BLE001 - one bad Job must not stop the others
                log.exception("executor: %s %s failed", kind, obj["metadata"].get("name"))
                self.errors.append(f"{obj['metadata'].get('name')}: {exc}")

    async def _handle(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if resource == POD_RESOURCE:
            if kind == "DELETED" and name in self._running:
                await self._kill(name)
            return
        if kind == "DELETED":
            self._generations.pop(name, None)
            return
        generation = int(obj["metadata"].get("generation", 1))
        if self._generations.get(name) == generation:
            return  # a status-only change (often our own write)
        self._generations[name] = generation
        if obj.get("spec", {}).get("suspend"):
            for pod, running in list(self._running.items()):
                if running.job == name:
                    await self._kill(pod)
        await self._sync_and_launch(name)

    async def _sync_and_launch(self, job_name: str) -> None:
        if self.sim.job(job_name) is None:
            return
        await self.sim.sync_job(job_name)
        for pod in self.sim.pods(job_name):
            pod_name = pod["metadata"]["name"]
            if (pod.get("status") or {}).get("phase", "Pending") == "Pending" and pod_name not in self._running:
                await self._launch(job_name, pod)

    async def _launch(self, job_name: str, pod: dict[str, Any]) -> None:
        assert self._workdir is not None
        pod_name = pod["metadata"]["name"]
        try:
            spec = process_spec(pod, self.claims, self._workdir, env_overrides=self.env_overrides)
            spec.termination_log.unlink(missing_ok=True)
            process = await asyncio.create_subprocess_exec(
                *spec.argv, env=spec.env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except (OSError, LookupError) as exc:
            # Like a container that cannot start: the pod fails with the reason in its message.
            self.errors.append(f"{pod_name}: {exc}")
            await self.sim.run(pod_name, f"splatops local: cannot start the trainer: {exc}")
            await self.sim.terminate(pod_name, 128, str(exc), reason="StartError")
            return
        await self.sim.run(pod_name, node="localhost")
        task = asyncio.create_task(self._supervise(job_name, pod_name, process, spec))
        self._running[pod_name] = _Running(job_name, process, task)

    async def _supervise(self, job_name: str, pod_name: str, process: asyncio.subprocess.Process,
                         spec: ProcessSpec) -> None:
        assert process.stdout is not None
        lines: list[str] = []
        while raw := await process.stdout.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            del lines[:-FALLBACK_LOG_LINES]
            await self.emulator.append_log(self.namespace, pod_name, line)
            if self.on_output is not None:
                self.on_output(pod_name, line)
        code = exit_code_of(await process.wait())
        running = self._running.pop(pod_name, None)
        if running is not None and running.stopping:
            return  # killed for suspend/delete: the pod is (being) deleted, nothing to report
        if self.sim.emulator.read(POD_RESOURCE, self.namespace, pod_name) is None:
            return
        await self.sim.terminate(pod_name, code, termination_message(spec.termination_log, code, lines))
        await self._sync_and_launch(job_name)  # a retried pod (backoffLimit) starts here

    async def _kill(self, pod_name: str) -> None:
        running = self._running.get(pod_name)
        if running is None:
            return
        running.stopping = True
        await stop_process_group(running.process, running.task, self.grace_period)
        self._running.pop(pod_name, None)

