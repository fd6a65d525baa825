"""The exec API of a pod whose claim is a local directory: the command runs as a local process,
with the pod's mount path (`/data`) in its arguments mapped to the directory.

It yields the exec protocol's frames (channel byte + payload: stdout 1, stderr 2, and the final
metav1.Status on 3), as the websocket of a real cluster does: `splatops upload` to a
`splatops local` claim and the tests run the uploader's real shell scripts through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any

from splatops import names

STDOUT, STDERR, ERROR = 1, 2, 3


def map_args(command: Sequence[str], volume: os.PathLike[str] | str, mount: str = names.SCENE_MOUNT) -> list[str]:
    root = str(pathlib.Path(volume))
    return [root + arg[len(mount):] if arg == mount or arg.startswith(mount + "/") else arg for arg in command]


def status_frame(code: int) -> bytes:
    if code == 0:
        status = {"metadata": {}, "status": "Success"}
    else:
        status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                  "message": f"command terminated with non-zero exit code: exit code {code}",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
    return bytes([ERROR]) + json.dumps(status).encode()


async def _feed(proc: asyncio.subprocess.Process, stdin: AsyncIterable[bytes] | None) -> None:
    assert proc.stdin is not None
    try:
        if stdin is not None:
            async for chunk in stdin:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command stopped reading; its status says why
    finally:
        proc.stdin.close()


def claim_dir(pod: Mapping[str, Any], claims: Mapping[str, str], mount: str = names.SCENE_MOUNT) -> str | None:
    """The local directory of the claim the pod mounts at `mount` (None: not one we map)."""
    spec = pod.get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for container in spec.get("containers") or []:
        for m in container.get("volumeMounts") or []:
            if m.get("mountPath") == mount:
                claim = (volumes.get(m.get("name")) or {}).get("persistentVolumeClaim", {}).get("claimName")
                return claims.get(claim) if claim else None
    return None


async def exec_local(volume: os.PathLike[str] | str, command: Sequence[str],
                     stdin: AsyncIterable[bytes] | None = None) -> AsyncIterator[bytes]:
    """Run `command` with the volume mapped; yield exec-protocol frames. As with a kubelet, the
    stream ends when the command does, whether or not its stdin was read to the end."""
    proc = await asyncio.create_subprocess_exec(
        *map_args(command, volume), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(_feed(proc, stdin))
    errors = asyncio.create_task(proc.stderr.read())
    try:
        while chunk := await proc.stdout.read(1 << 16):
            yield bytes([STDOUT]) + chunk
        code = await proc.wait()
        if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
            raise feeder.exception()  # type: ignore[misc]  # the input broke (e.g. a cut-off stream)
        err = await errors
        if err:
            yield bytes([STDERR]) + err
        yield status_frame(code)
    finally:
        for task in (feeder, errors):
            task.cancel()
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
