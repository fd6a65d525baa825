"""Reading the scene volume without leaving it: every path the gateway serves or checks.

Anyone who can write to the volume (a trainer, a user with a pod on the claim) could plant a
symbolic link there (`results.ply -> /var/run/secrets/.../token`, or a whole scene directory
pointing elsewhere). So the gateway never follows one: it walks each component from the mount
with `O_NOFOLLOW` relative to the directory it already opened (no window to swap a component
between a check and the open), and serves the file from the descriptor it opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat
from collections.abc import Iterator, Sequence

from splatops import contract

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # no hang on a FIFO
CHUNK = 1024 * 1024


class Refused(Exception):
    """A path the gateway will not serve: `status` 404 (absent) or 403 (a link, not a regular file)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _refusal(dir_fd: int, name: str, shown: str, exc: OSError) -> Refused:
    """Why `name` (in dir_fd) could not be opened without following links."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return Refused(404, f"{shown} does not exist")
    except OSError:
        return Refused(404, f"{shown} cannot be read ({exc.strerror})")
    if stat.S_ISLNK(st.st_mode):
        return Refused(403, f"{shown} is a symbolic link; the gateway follows no links on the volume")
    if exc.errno == errno.ENOTDIR:
        return Refused(404, f"{shown} is not a directory")
    return Refused(404, f"{shown} cannot be read ({exc.strerror})")


def _open_at(dir_fd: int, name: str, shown: str, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(dir_fd, name, shown, exc) from None


def _check_inside(fd: int, root: str, shown: str) -> None:
    """Belt and braces (Linux): the kernel's name for what we opened is under the mount."""
    with contextlib.suppress(OSError):
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise Refused(403, f"{shown} is outside the scene volume")


@contextlib.contextmanager
def open_dir(mount: str, parts: Sequence[str]) -> Iterator[int]:
    """A descriptor of the directory `mount/parts...`, reached without following any link."""
    root = os.path.realpath(mount)  # the mount itself is configuration, not volume content
    for part in parts:
        if part in ("", ".", "..") or "/" in part:
            raise Refused(403, f"{part!r} is not a plain path component")
    fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        for i, part in enumerate(parts):
            shown = "/".join(parts[: i + 1])
            nxt = _open_at(fd, part, shown, _DIR_FLAGS)
            os.close(fd)
            fd = nxt
        _check_inside(fd, root, "/".join(parts) or ".")
        yield fd
    finally:
        os.close(fd)


def open_regular_file(mount: str, parts: Sequence[str]) -> tuple[int, os.stat_result]:
    """An open descriptor (the caller closes it) of the regular file `mount/parts...` and its stat."""
    if not parts:
        raise Refused(404, "no file named")
    shown = "/".join(parts)
    with open_dir(mount, parts[:-1]) as dir_fd:
        fd = _open_at(dir_fd, parts[-1], shown, _FILE_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(403, f"{shown} is not a regular file")
        _check_inside(fd, os.path.realpath(mount), shown)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_chunks(fd: int) -> Iterator[bytes]:
    """The file's bytes (from the descriptor opened above, even if the name is replaced meanwhile);
    closes it at the end. Starlette runs this synchronous iterator in its thread pool."""
    with os.fdopen(fd, "rb", closefd=True) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _entries(dir_fd: int, parts: Sequence[str]) -> list[os.DirEntry[str]]:
    """The entries of the subdirectory `parts...` of dir_fd; none if it is absent. A link on the
    way is refused (403), as everywhere else."""
    fds: list[int] = []
    try:
        fd = dir_fd
        for i, part in enumerate(parts):
            fd = _open_at(fd, part, "/".join(parts[: i + 1]), _DIR_FLAGS)
            fds.append(fd)
        with os.scandir(fd) as it:
            return list(it)
    except Refused as refused:
        if refused.status == 403:
            raise
        return []
    finally:
        for fd in fds:
            os.close(fd)


def _present(entry: os.DirEntry[str]) -> bool:
    # A file, or a link the trainer resolves itself (it follows links only inside the scene):
    # the gateway reports that the name is there, never what a link points to.
    return entry.is_file(follow_symlinks=False) or entry.is_symlink()


def scene_problem(mount: str, parts: Sequence[str], *, need_model: bool = True) -> str | None:
    """The original pipeline's prerequisite errors for the scene `mount/parts...` (None: trainable),
    checked without following links. Raises Refused if the scene directory cannot be reached.
    `need_model` False: only the images (colmap_ba makes the model)."""
    with open_dir(mount, parts) as scene_fd:
        colmap = {e.name for e in _entries(scene_fd, pathlib.PurePosixPath(contract.COLMAP_DIR).parts) if _present(e)}
        if need_model and not contract.is_colmap_model(colmap):
            return contract.MSG_COLMAP_NOT_FOUND
        images = _entries(scene_fd, (contract.IMAGES_DIR,))
        if not any(_present(e) and not e.name.startswith(".") for e in images):
            return contract.MSG_NO_IMAGES
    return None
