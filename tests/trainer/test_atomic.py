"""atomic.py: whole-file replacement, readable modes (not mkstemp's 0600), stale temp cleanup."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from splatops_trainer import atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for the test; restore the old one after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_final_files_are_readable_by_others_as_the_umask_allows(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    atomic.write_bytes(tmp_path / "results.ply", b"ply")
    atomic.write_json(tmp_path / "config.json", {"a": 1})
    with atomic.atomic_open(tmp_path / "ckpt_000010.pt", "wb") as fh:
        fh.write(b"x")
    for name in ("results.ply", "config.json", "ckpt_000010.pt"):
        assert _mode(tmp_path / name) == expected, name


def test_replacing_keeps_the_readable_mode(tmp_path: Path, umask) -> None:
    umask(0o022)
    target = tmp_path / "results.ply"
    target.write_bytes(b"old")
    target.chmod(0o600)  # e.g. written by the old mkstemp-based writer
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o644


def test_a_failed_write_leaves_the_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "results.ply"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "wb") as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"earlier"
    assert os.listdir(tmp_path) == ["results.ply"]


def test_temp_names_match_the_cleanup_pattern(tmp_path: Path) -> None:
    with atomic.atomic_open(tmp_path / "config.json", "w") as fh:
        fh.write("{}")
        (tmp,) = [n for n in os.listdir(tmp_path) if n != "config.json"]
    assert tmp.startswith(".config.json.") and tmp.endswith(".tmp")
    assert atomic.TEMP_NAME.match(tmp)


def test_temp_left_by_sigkill_is_removed_by_cleanup(tmp_path: Path) -> None:
    """A writer killed mid-write (os._exit: no cleanup runs) leaves its temp; cleanup finds it."""
    out = tmp_path / "gsplat"
    code = textwrap.dedent(
        f"""
        import os
        from splatops_trainer import atomic
        with atomic.atomic_open({str(out / "results.ply")!r}, "wb") as fh:
            fh.write(b"half a model")
            fh.flush()
            os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 9
    (left,) = os.listdir(out)
    assert atomic.TEMP_NAME.match(left)
    assert atomic.remove_stale_temps(out) == [out / left]
    assert os.listdir(out) == []


def test_cleanup_removes_only_the_writers_temps(tmp_path: Path) -> None:
    out = tmp_path / "gsplat"
    stale = [
        out / ".results.ply.k3j9x_2a.tmp",  # an older mkstemp name
        out / ".config.json.0123abcd.tmp",
        out / "results" / ".training_log.txt.deadbeef.tmp",
        out / "results" / "checkpoints" / ".ckpt_000020.pt.a1b2c3d4.tmp",
        out / "cache" / "images_2" / ".view_000.png.png.ffffffff.tmp",
    ]
    kept = [
        out / "results.ply",
        out / "config.json",
        out / ".hidden",
        out / "notes.tmp",
        out / ".short.abc.tmp",  # not 8 characters
        out / ".results.ply.TOOLONGNAME.tmp",
        out / "results" / "training_log.txt",
        out / "results" / "checkpoints" / "ckpt_000010.pt",
    ]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (out / ".dir.01234567.tmp").mkdir()  # a directory with a temp-like name: not ours
    removed = atomic.remove_stale_temps(out)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert (out / ".dir.01234567.tmp").is_dir()


def test_cleanup_of_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    assert atomic.remove_stale_temps(tmp_path / "nope") == []
