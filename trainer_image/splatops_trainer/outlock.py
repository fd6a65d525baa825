"""One writer per output directory: an exclusive lock held for the whole run.

The operator never runs two trainings with the same output directory at once; this is the second
line of defence (two claims on one volume, a training started by hand, an operator bug). The
lock is `flock(LOCK_EX | LOCK_NB)` on `<output>/.splatops.lock`, taken before anything in the
directory is written, released when the process exits. The kernel drops it when the process
dies (kill -9, OOM kill), so a crashed run never blocks the next one; on NFS the Linux client
maps flock to NFS locks, which the server drops when the dead client's lease expires (node loss).
The file also records who holds it (training, pod, host, pid, start time) so that a second writer
can say whom it collided with; the file is never deleted (every writer locks the same inode).

Where the filesystem refuses locks altogether (ENOLCK/EOPNOTSUPP: some FUSE or NFS mounts without
a lock manager) the run goes on with a warning: the holder is still recorded, and the operator's
one-writer rule is then the only guard.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from splatops import contract

from .errors import TrainerError

log = logging.getLogger(__name__)

_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


class OutputLock:
    """A held lock on one output directory (release() or process exit frees it)."""

    def __init__(self, path: Path, fd: int, locked: bool) -> None:
        self.path, self._fd, self.locked = path, fd, locked

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_info(training: str | None) -> dict[str, Any]:
    """Who this writer is. In a pod, HOSTNAME is the pod's name."""
    return {
        "training": training,
        "pod": os.environ.get("HOSTNAME") or socket.gethostname(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it recorded no details)"
    return (f"training {info.get('training') or '?'} (pod {info.get('pod') or '?'}, host {info.get('host') or '?'}, "
            f"pid {info.get('pid') or '?'}, since {info.get('started') or '?'})")


def _read_info(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def busy_error(out_dir: Path, info: dict[str, Any] | None) -> TrainerError:
    return TrainerError(
        contract.Reason.OUTPUT_BUSY,
        f"the output directory {out_dir} is in use by {describe(info)}; two trainings must not write "
        "one output directory: give this one another output path, or wait until that one ends",
    )


def acquire(out_dir: Path, info: dict[str, Any]) -> OutputLock:
    """Lock `out_dir` (created if missing) for this process, or raise OutputBusy (exit 2)
    naming the holder. Nothing in the directory but the lock file is touched."""
    path = out_dir / contract.LOCK_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        # Nothing can be written there either: the run's own checks and writes report that, in
        # their words; a lock on a directory nobody can write protects nothing.
        log.warning("cannot create the output lock %s (%s): going on without it", path, exc.strerror)
        return OutputLock(path, -1, False)
    locked = True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_info(fd)
        os.close(fd)
        raise busy_error(out_dir, holder) from None
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            os.close(fd)
            raise
        locked = False
        log.warning("the filesystem of %s does not support locks (%s): going on without the output "
                    "lock; the last holder recorded there was %s", out_dir, exc.strerror, describe(_read_info(fd)))
    with contextlib.suppress(OSError):  # the record is for messages only; the lock is what counts
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    return OutputLock(path, fd, locked)


def try_acquire(out_dir: Path, info: dict[str, Any]) -> OutputLock | None:
    """The lock if it is free (for writing error.log after an early failure), else None."""
    try:
        return acquire(out_dir, info)
    except (TrainerError, OSError):
        return None
