"""Structure-from-motion with pycolmap: a scene with photos but no COLMAP model gets one.

`ensure_model` runs before the scene check when `--reconstruct` says so (IfMissing: only when
neither `sparse/0` nor `colmap/sparse_initial` holds a model; Always: every run, unless this
output directory already made the model that is there; Never: the old ColmapNotFound). Steps, all
on CPU threads: SIFT feature extraction, matching (exhaustive up to EXHAUSTIVE_MAX_IMAGES images,
sequential beyond), incremental mapping; the model with the most registered images wins.

Where things live: the database and the mapper's output in `<output>/sfm/` (this run's lock
covers it; removed at the start of every reconstruction, so an interrupted one restarts from
scratch), the published model in `<scene>/colmap/sparse_initial/`, built in a hidden temp
directory beside it and renamed into place, so a half-written model is never where the trainer
or a user reads it. A replaced model (Always) is kept as `colmap/sparse_initial.previous/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image  # before pycolmap (see scene.py)

import pycolmap  # noqa: I001

from splatops import contract

from . import atomic, scene
from .config import TrainerConfig
from .errors import TrainerError

log = logging.getLogger(__name__)
T = TypeVar("T")

CAMERA_MODEL = "SIMPLE_RADIAL"  # one focal length, principal point, k1: what the loader undistorts
EXHAUSTIVE_MAX_IMAGES = 100  # beyond: sequential matching (n^2 pairs are too slow on CPU threads)
SEQUENTIAL_OVERLAP = 20  # neighbours each image is matched with, in name order
MIN_REGISTERED_FRACTION = 0.5  # fewer registered images fail the run (ReconstructionFailed)
WORKSPACE = "sfm"  # under the output directory: database.db, models/
SUMMARY_FILE = "reconstruction.json"  # in the output directory: the numbers of the model it made
PREVIOUS_SUFFIX = ".previous"  # colmap/sparse_initial.previous: the model Always replaced
LISTED_UNREGISTERED = 20  # names kept in the summary (the termination message must stay < 4 KiB)
STALE_TEMP_S = 600.0  # a publish takes milliseconds: an older hidden temp dir is a killed writer's
POLL_S = 1.0  # how often progress is read from the database while a step runs

Report = Callable[[contract.StageReport], None]


@dataclasses.dataclass
class _Clock:
    t0: float = dataclasses.field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 2)


def wanted(cfg: TrainerConfig) -> bool:
    """Whether this run reconstructs (before the earlier-result shortcut of Always)."""
    if cfg.reconstruct == contract.RECONSTRUCT_NEVER or not cfg.scene_dir.is_dir():
        return False
    if cfg.reconstruct == contract.RECONSTRUCT_ALWAYS:
        return True
    return not (scene.has_model(cfg.scene_dir / contract.SPARSE_DIR) or scene.has_model(cfg.scene_dir / contract.COLMAP_DIR))


def ensure_model(cfg: TrainerConfig, report: Report) -> dict[str, Any] | None:
    """Reconstruct the scene when `cfg.reconstruct` says so; the summary, or None when not.

    A retried pod (same output directory) whose model is in place does not redo it, and reports
    the numbers of the run that made it (the checkpoints stay valid: same model, same fingerprint)."""
    if cfg.reconstruct == contract.RECONSTRUCT_NEVER or not cfg.scene_dir.is_dir():
        return None
    images_dir = cfg.scene_dir / contract.IMAGES_DIR
    target = cfg.scene_dir / contract.COLMAP_DIR
    earlier = _earlier_summary(cfg, target, images_dir)
    if earlier is not None:
        log.info("the model in %s is this training's own reconstruction: not redone", target)
        return earlier
    if not wanted(cfg):
        return None
    names = sorted(scene.list_images(images_dir, cfg.scene_dir))
    if not names:
        raise TrainerError(
            contract.Reason.NO_IMAGES,
            f"{contract.MSG_NO_IMAGES} in {images_dir}. Upload the scene's photos there first; the "
            "trainer reconstructs the cameras (structure-from-motion) when there is no COLMAP model.",
        )
    sizes = scene.check_image_headers(images_dir, names)  # garbage files fail before SfM (InvalidImage)
    recon, summary = run_sfm(cfg, images_dir, names, sizes, report)
    if not publish(recon, target, replace=cfg.reconstruct == contract.RECONSTRUCT_ALWAYS):
        log.warning("another run published a model in %s meanwhile: using that one", target)
        return None
    # The model's identity stays in reconstruction.json (for a retried pod), not in the status.
    atomic.write_json(cfg.out / SUMMARY_FILE, {**summary, "model_fingerprint": scene.scene_fingerprint(target, images_dir, [])})
    shutil.rmtree(cfg.out / WORKSPACE, ignore_errors=True)  # the database is not needed any more
    return summary


def _earlier_summary(cfg: TrainerConfig, target: Path, images_dir: Path) -> dict[str, Any] | None:
    """The summary this output directory wrote, if the model in place is still the one it made.
    (With Always, redoing it on a retried pod would also void the checkpoints: a new fingerprint.)"""
    if not scene.has_model(target):
        return None
    try:
        summary = json.loads((cfg.out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("model_fingerprint") != scene.scene_fingerprint(target, images_dir, []):
        return None
    return {k: v for k, v in summary.items() if k != "model_fingerprint"}


# --- The pipeline ----------------------------------------------------------------------------------


def run_sfm(
    cfg: TrainerConfig, images_dir: Path, names: list[str], sizes: dict[str, tuple[int, int]], report: Report
) -> tuple[pycolmap.Reconstruction, dict[str, Any]]:
    """Extract, match, map in `<output>/sfm/` (started afresh); the largest model and its numbers."""
    workspace = cfg.out / WORKSPACE
    shutil.rmtree(workspace, ignore_errors=True)  # an interrupted run's database: start clean
    workspace.mkdir(parents=True)
    database = workspace / "database.db"
    threads = usable_cpus()
    total, clock = len(names), _Clock()
    mode, mode_name = camera_mode(images_dir, names, sizes)
    log.info("reconstructing %d images on %d CPU threads: %s camera, %s", total, threads, mode_name, CAMERA_MODEL)
    extract_s = _timed(lambda: _extract(database, images_dir, names, mode, threads, report, clock))
    matcher = "exhaustive" if total <= EXHAUSTIVE_MAX_IMAGES else "sequential"
    log.info("matching %s (%d images; exhaustive up to %d)", matcher, total, EXHAUSTIVE_MAX_IMAGES)
    match_s = _timed(lambda: _match(database, matcher, total, threads, report, clock))
    models: dict[int, pycolmap.Reconstruction] = {}
    map_s = _timed(lambda: models.update(_map(cfg, database, images_dir, workspace, total, threads, report, clock)))
    best = max(models.values(), key=lambda r: r.num_reg_images(), default=None)
    registered = sorted(i.name for i in best.images.values() if i.has_pose) if best is not None else []
    unregistered = [n for n in names if n not in set(registered)]
    summary = {
        "images": total,
        "registered": len(registered),
        "points": best.num_points3D() if best is not None else 0,
        "mean_reprojection_error_px": round(float(best.compute_mean_reprojection_error()), 4) if best is not None else None,
        "seconds": clock.elapsed(),
        "extract_seconds": extract_s,
        "match_seconds": match_s,
        "map_seconds": map_s,
        "matcher": matcher,
        "camera_mode": mode_name,
        "camera_model": CAMERA_MODEL,
        "models": len(models),
        "threads": threads,
        "unregistered_count": len(unregistered),
        "unregistered": unregistered[:LISTED_UNREGISTERED],
    }
    _report(report, f"Registered {len(registered)}/{total} images, {summary['points']} points", len(registered), total, clock)
    if unregistered:
        log.warning("%d of %d images did not register: %s", len(unregistered), total, ", ".join(unregistered))
    if best is None or len(registered) < math.ceil(MIN_REGISTERED_FRACTION * total):
        raise _too_few(len(registered), total, unregistered)
    log.info("reconstruction: %s", {k: v for k, v in summary.items() if k != "unregistered"})
    return best, summary


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset), not all of the node's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _too_few(registered: int, total: int, unregistered: list[str]) -> TrainerError:
    shown = ", ".join(unregistered[:10]) + (", ..." if len(unregistered) > 10 else "")
    return TrainerError(
        contract.Reason.RECONSTRUCTION_FAILED,
        f"Reconstruction failed: structure-from-motion registered only {registered} of {total} images "
        f"(not registered: {shown}). Take more photos with more overlap (every part of the scene in "
        "3 or more photos, neighbours sharing about two thirds of the view), sharp (no motion blur) "
        "and of textured surfaces; remove unrelated photos; or upload a COLMAP model to colmap/sparse_initial/.",
    )


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    fn()
    return round(time.monotonic() - t0, 2)


def _report(report: Report, message: str, done: int | None, total: int | None, clock: _Clock) -> None:
    report(contract.StageReport(stage=contract.STAGE_RECONSTRUCTING, message=message, done=done, total=total,
                                elapsed_s=clock.elapsed()))


def camera_mode(images_dir: Path, names: list[str], sizes: dict[str, tuple[int, int]]) -> tuple[pycolmap.CameraMode, str]:
    """One shared camera when every photo has the same size and the same EXIF make, model and
    focal length (or none of them: frames of one video), else one camera per image."""
    if len(set(sizes.values())) == 1 and len({_exif_camera(images_dir / n) for n in names}) == 1:
        return pycolmap.CameraMode.SINGLE, "single"
    return pycolmap.CameraMode.PER_IMAGE, "per-image"


def _exif_camera(path: Path) -> tuple[str, str, str]:
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            focal = exif.get_ifd(0x8769).get(0x920A)  # Exif IFD: FocalLength
            return str(exif.get(0x010F, "")).strip(), str(exif.get(0x0110, "")).strip(), str(focal or "")
    except (OSError, ValueError, SyntaxError):
        return "", "", ""


def _count(database: Path, what: str) -> int | None:
    """A count from the database pycolmap is writing (None while it is busy or not there yet).

    Read through pycolmap's own SQLite, never Python's `sqlite3`: two SQLite libraries in one
    process do not see each other's POSIX locks (closing one's file descriptor drops the other's
    locks), which corrupted the writer's shared memory (SIGBUS in pycolmap's WriteMatches)."""
    if not database.is_file():
        return None  # Database.open would create it, racing pycolmap's own creation
    try:
        db = pycolmap.Database.open(database)
    except Exception:  # noqa: BLE001 - busy or locked: no number this time
        return None
    try:
        return int(getattr(db, what)())
    except Exception:  # noqa: BLE001
        return None
    finally:
        db.close()


def _extract(database: Path, images_dir: Path, names: list[str], mode: pycolmap.CameraMode, threads: int,
             report: Report, clock: _Clock) -> None:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = CAMERA_MODEL
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = threads
    total = len(names)

    def poll() -> None:
        done = _count(database, "num_images")
        if done is not None:
            _report(report, f"Extracting features {done}/{total}", done, total, clock)

    _report(report, f"Extracting features 0/{total}", 0, total, clock)
    run_cancellable(lambda token: pycolmap.extract_features(
        database, images_dir, image_names=names, camera_mode=mode, reader_options=reader,
        extraction_options=options, device=pycolmap.Device.cpu, cancellation_token=token), poll)
    poll()


def _match(database: Path, matcher: str, total: int, threads: int, report: Report, clock: _Clock) -> None:
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = threads
    pairs = total * (total - 1) // 2 if matcher == "exhaustive" else None

    def poll() -> None:
        done = _count(database, "num_matched_image_pairs")
        if done is not None:
            _report(report, f"Matching ({matcher}) {done}" + (f"/{pairs} pairs" if pairs else " pairs"), done, pairs, clock)

    _report(report, f"Matching ({matcher})", 0, pairs, clock)
    if matcher == "exhaustive":
        run_cancellable(lambda token: pycolmap.match_exhaustive(
            database, matching_options=options, device=pycolmap.Device.cpu, cancellation_token=token), poll)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = SEQUENTIAL_OVERLAP
        run_cancellable(lambda token: pycolmap.match_sequential(
            database, matching_options=options, pairing_options=pairing, device=pycolmap.Device.cpu,
            cancellation_token=token), poll)
    poll()


def _map(cfg: TrainerConfig, database: Path, images_dir: Path, workspace: Path, total: int, threads: int,
         report: Report, clock: _Clock) -> dict[int, pycolmap.Reconstruction]:
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = cfg.seed
    registered = [0]

    def next_image() -> None:  # called by the mapper's thread after each registration
        registered[0] += 1
        done = min(total, registered[0] + 1)  # the initial pair is two images, one callback
        _report(report, f"Registered {done}/{total} images", done, total, clock)

    _report(report, f"Mapping {total} images", 0, total, clock)
    (workspace / "models").mkdir(exist_ok=True)
    return run_cancellable(lambda token: pycolmap.incremental_mapping(
        database, images_dir, workspace / "models", options=options, next_image_callback=next_image,
        cancellation_token=token), lambda: None)


def run_cancellable(fn: Callable[[pycolmap.CancellationToken], T], poll: Callable[[], None]) -> T:
    """Run a pycolmap step on a worker thread, polling progress from this (the main) thread.

    The main thread stays in Python, so SIGTERM's handler runs at once (raising Terminated): the
    step is then cancelled through its token and joined before the exception goes on."""
    token = pycolmap.CancellationToken()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(token)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="sfm", daemon=True)
    try:
        worker.start()  # inside the try: a SIGTERM right now must still cancel and join it
        while worker.is_alive():
            worker.join(POLL_S)
            if worker.is_alive():
                poll()
    except BaseException:
        token.cancel()
        if worker.ident is not None:  # started: never exit with pycolmap still running in it
            worker.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- Publishing -------------------------------------------------------------------------------------


def publish(recon: pycolmap.Reconstruction, target: Path, *, replace: bool) -> bool:
    """Write the model beside `target` in a hidden temp dir, fsync it, rename it into place.

    An existing model stays unless `replace` (it then becomes `<target>.previous`); a `target`
    without a model (an empty or partial folder) is moved aside the same way. False when a model
    appeared there meanwhile and `replace` is off (another training published first).
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is shared like the images
        recon.write_binary(str(tmp))
        for path in tmp.iterdir():
            path.chmod(0o644)
            _fsync(path)
        _fsync(tmp)
        if os.path.lexists(target):
            if scene.has_model(target) and not replace:
                return False
            previous = target.with_name(target.name + PREVIOUS_SUFFIX)
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(target, previous)
        os.rename(tmp, target)
        _fsync(parent)
    except OSError as exc:
        raise TrainerError(
            contract.Reason.OUTPUT_NOT_WRITABLE,
            f"the reconstruction could not be written to {target} ({exc}): the scene volume must be writable.",
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def remove_stale_temps(parent: Path, name: str, max_age_s: float = STALE_TEMP_S) -> None:
    """Hidden temp dirs of publishes a killed writer left (never a live one: those are seconds old)."""
    now = time.time()
    for path in parent.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() and now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path)
                log.info("removed a stale temporary model %s", path)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def summary_line(summary: dict[str, Any]) -> str:
    """The reconstruction in training_log.txt."""
    return (
        f"Reconstruction | {summary['registered']}/{summary['images']} images registered | {summary['points']} points "
        f"| reprojection error {summary['mean_reprojection_error_px']} px | {summary['matcher']} matching "
        f"| {summary['seconds']} s"
    )
