"""Atomic file writes: a reader (the operator, a viewer, a resumed pod) never sees half a file.

Write to a temporary file in the same directory (same filesystem, so `os.replace` is a rename),
fsync it, rename over the target, then fsync the directory so the rename survives a node crash.

The temporary file is created with mode 0o666 minus the umask, like any file `open()` creates
(not mkstemp's owner-only 0600): results.ply, config.json and checkpoints end up 0644 under the
usual umask 022, readable by a gateway or viewer that mounts the volume under another uid.
Temporary names are `.<target name>.<8 characters>.tmp`; `remove_stale_temps` removes exactly
those, left behind by a writer that was killed (SIGKILL, node loss) before its rename, and only
in the output directory the caller holds the lock of (see outlock.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from splatops.contract import LOCK_FILE

FILE_MODE = 0o666  # before the umask, as open() does
# `.results.ply.1a2b3c4d.tmp`; [a-z0-9_] also matches the names an older, mkstemp-based writer made.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _temp_path(target: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {target}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path`; on a clean exit it replaces `path`, else it vanishes."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_path(target)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    # Not every filesystem lets a directory be opened/fsynced (some network volumes); the data
    # itself is already fsynced, so this is best effort by design.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete this writer's leftover temporary files under `directory` (recursively).

    Only regular files named like `atomic_open`'s temporaries are touched. Call it holding the
    directory's output lock and before anything in it is written, so no live write (of this
    process or another) can be hit. Subdirectories that are another training's output directory
    (they hold its lock file, e.g. `<scene>/gsplat/<name>/` under the seed's `<scene>/gsplat/`)
    are not entered: their temporaries are their writer's. Missing or unreadable directories are
    fine (nothing to clean).
    """
    removed: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d / LOCK_FILE).exists()]
        for name in filenames:
            if TEMP_NAME.match(name):
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        removed.append(p)
    return removed
