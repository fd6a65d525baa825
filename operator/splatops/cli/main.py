"""`splatops` / `kubectl splat`: run the operator, train, watch, fetch results, serve the REST API.

Exit codes: 0 success; 1 the training failed or an operation failed (missing cluster, resource,
scene, a failed download); 2 usage errors (bad flags or values). `wait` exits 0 on Succeeded and
1 on Failed, so scripts can chain `splatops wait NAME && splatops download NAME -o x.ply`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from splatops import __version__, contract, names
from splatops.cli import original

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad value the user can fix (exit 2)."""


def _has_model(folder: pathlib.Path) -> bool:
    return folder.is_dir() and all(
        any((folder / f"{stem}{ext}").is_file() for ext in (".bin", ".txt"))
        for stem in ("cameras", "images", "points3D")
    )


def scene_problem(scene_dir: pathlib.Path) -> str | None:
    """The original pipeline's prerequisite checks on a scene directory (None: looks trainable).

    The model may be in colmap/sparse_initial or sparse/0, as the trainer reads either."""
    colmap = scene_dir / contract.COLMAP_DIR
    if not (_has_model(scene_dir / contract.SPARSE_DIR) or _has_model(colmap)):
        return (f"{contract.MSG_COLMAP_NOT_FOUND} at {colmap} or {scene_dir / contract.SPARSE_DIR} "
                "(expected cameras/images/points3D .bin or .txt)")
    images = scene_dir / contract.IMAGES_DIR
    if not images.is_dir() or not any(p.is_file() and not p.name.startswith(".") for p in images.iterdir()):
        return f"{contract.MSG_NO_IMAGES} in {images}"
    return None


# --- argument parsing ----------------------------------------------------------------------------


def _kube_flags(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """kubectl's cluster flags, accepted before the verb (`splatops -n x list`) and after it.
    After the verb they default to SUPPRESS, so they never overwrite values given before it."""
    default = None if top else argparse.SUPPRESS
    g = p.add_argument_group("cluster (as kubectl)")
    g.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    g.add_argument("--context", default=default, help="kubeconfig context (default: the current context)")
    g.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's namespace)")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", metavar="SCENE", help="scene id (also the default path inside the volume); a local "
                   "directory (./fox, /x/fox) is uploaded first, as `upload` does, and named after it")
    p.add_argument("--pvc", required=True, metavar="CLAIM", help="PersistentVolumeClaim holding the scene")
    p.add_argument("--path", help="scene directory inside the volume (default: SCENE)")
    p.add_argument("--output", metavar="PATH", help="output directory inside the volume "
                   "(default: <path>/gsplat/<name>; each training owns its own)")
    p.add_argument("--data-factor", type=int, help="image downscale factor: 1, 2, 4 or 8 (default 1)")
    p.add_argument("--max-steps", type=int, help="training iterations (default 30000)")
    p.add_argument("--strategy", choices=("default", "mcmc"), help="densification strategy")
    p.add_argument("--gpus", type=int, help="GPUs of the trainer (default 1)")
    p.add_argument("--memory", help="memory request and limit, e.g. 24Gi (default: the operator's)")
    p.add_argument("--cpu", help="CPU request, e.g. 4 (default: the operator's)")
    p.add_argument("--queue", metavar="LOCALQUEUE", help="Kueue LocalQueue (spec.queueName): Kueue admits the training")
    p.add_argument("--name", help="resource name (default: SCENE, then SCENE-2, SCENE-3, ...)")
    p.add_argument("--wait", action="store_true", help="wait until done, showing progress")
    p.add_argument("--download", metavar="FILE", help="after success, download results.ply to FILE (implies --wait)")
    p.add_argument("--dry-run", action="store_true", help="print the resource's YAML instead of creating it (no cluster access)")
    p.add_argument("--skip-pvc-check", action="store_true",
                   help="do not check that the claim exists first (for users who may not read PVCs)")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    _kube_flags(p)


def build_parser() -> argparse.ArgumentParser:
    invoked = pathlib.Path(sys.argv[0]).name if sys.argv else ""
    parser = argparse.ArgumentParser(
        prog="kubectl splat" if invoked == "kubectl-splat" else "splatops",
        usage="%(prog)s [--version] [--kubeconfig FILE] [--context NAME] [-n NAMESPACE] COMMAND ...",
        description="Train 3D Gaussian Splatting models on Kubernetes (also `kubectl splat`)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _kube_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")

    _train_arguments(sub.add_parser("train", help="create a GaussianSplatTraining for a scene on a PVC"))

    p = sub.add_parser("status", help="print a training's status as the original API's JSON")
    p.add_argument("name", metavar="NAME")
    _kube_flags(p)

    p = sub.add_parser("wait", help="show progress until done; exit 0 on Succeeded, 1 on Failed")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--timeout", type=float, help="give up (exit 1) after this many seconds")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    _kube_flags(p)

    p = sub.add_parser("logs", help="print the training pod's log")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="stream the log")
    _kube_flags(p)

    p = sub.add_parser("list", help="list trainings")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="trainings of every namespace (a NAMESPACE column)")
    p.add_argument("-o", "--output", choices=("table", "wide", "yaml", "json", "original"), default="table",
                   help="table (default); wide: + REASON, QUEUE, GPUS, JOB; yaml/json: the resources as a "
                   "kubectl List; original: the original pipeline's status JSON")
    _kube_flags(p)

    p = sub.add_parser("download", help="download a training's results.ply")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the PLY")
    p.add_argument("--image", help="image of the short-lived reader pod (default busybox; needs `cat`)")
    _kube_flags(p)

    p = sub.add_parser("upload", help="copy a local scene directory into a PVC (checked, resumable)")
    p.add_argument("directory", metavar="DIR", help="scene directory: images/ and colmap/sparse_initial (or sparse/0)")
    p.add_argument("--pvc", required=True, metavar="CLAIM", help="PersistentVolumeClaim to copy into")
    p.add_argument("--path", help="directory inside the volume (default: DIR's name)")
    p.add_argument("--image", help="image of the short-lived uploader pod (default busybox; needs sh, tar, sha256sum)")
    _kube_flags(p)

    p = sub.add_parser("gateway", help="serve the original REST API (uvicorn)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    _kube_flags(p)

    p = sub.add_parser("local", help="run everything on this machine: API, operator, trainer")
    from splatops.local import run as local_run

    local_run.add_arguments(p)
    return parser


def _target(args: argparse.Namespace) -> Any:
    from splatops.cli.kube import Target

    return Target(kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


# --- commands ------------------------------------------------------------------------------------


def training_manifest(args: argparse.Namespace, name: str, namespace: str | None) -> dict[str, Any]:
    import pydantic

    resources = {k: v for k, v in (("gpus", args.gpus), ("memory", args.memory), ("cpu", args.cpu)) if v is not None}
    extra: dict[str, Any] = {"resources": resources} if resources else {}
    if args.queue:
        extra["queueName"] = args.queue
    try:
        return original.build_training(
            name, scene_id=args.scene, claim=args.pvc, path=args.path or args.scene, namespace=namespace,
            data_factor=args.data_factor, max_steps=args.max_steps, strategy=args.strategy, extra_spec=extra,
            output_path=args.output,
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid training: {problems}") from None


async def cmd_train(args: argparse.Namespace) -> int:
    from splatops.cli import download as dl
    from splatops.cli.kube import connect, kubeconfig_path

    local_dir = local_scene_dir(args.scene)
    if local_dir is not None:  # train ./dir: upload it, then train the uploaded copy
        args.scene = local_dir.resolve().name
        args.path = args.path or args.scene
    if args.dry_run:
        name = args.name or original.run_name(args.scene, 1)
        sys.stdout.write(original.to_yaml(training_manifest(args, name, args.namespace)))
        return EXIT_OK
    target = _target(args)
    training_manifest(args, args.name or original.run_name(args.scene, 1), None)  # validate before connecting
    async with connect(target) as kube:
        volumes = dl.local_volumes(kubeconfig_path(target))
        if local_dir is not None:
            await _upload(kube, volumes, local_dir, args.pvc, args.path, None)
        elif args.pvc in volumes:  # a local volume: check the scene as the original pipeline did
            problem = scene_problem(pathlib.Path(volumes[args.pvc]) / (args.path or args.scene))
            if problem:
                raise FileNotFoundError(problem)
        elif not args.skip_pvc_check:
            await check_claim(kube, args.pvc)
        name = args.name
        if not name:
            existing = await kube.list_trainings(f"{original.LABEL_SCENE}={original.dns_label(args.scene)}")
            name = original.next_run_name(args.scene, [r["metadata"]["name"] for r in existing])
        created = await kube.create_training(training_manifest(args, name, kube.namespace))
        print(f"{names.PLURAL}.{names.GROUP}/{created['metadata']['name']} created", flush=True)
        if not (args.wait or args.download):
            return EXIT_OK
        code = await _wait(kube, name, args.timeout)
        if code != EXIT_OK or not args.download:
            return code
        return await _download(kube, target, name, pathlib.Path(args.download), None)


def local_scene_dir(scene: str) -> pathlib.Path | None:
    """A SCENE argument written as a path (./fox, /x/fox, fox/) names a local directory to upload."""
    if "/" not in scene and not scene.startswith("."):
        return None
    path = pathlib.Path(scene).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{scene} is not a directory (a scene id has no '/')")
    return path


async def _upload(kube: Any, volumes: dict[str, str], directory: pathlib.Path, claim: str,
                  path: str | None, image: str | None) -> None:
    """Check the scene as the trainer would, then copy it into the claim (a local volume directly)."""
    from functools import partial

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from splatops.cli import download as dl
    from splatops.cli import upload as up

    problem = scene_problem(directory)
    if problem:
        raise FileNotFoundError(problem)
    path = path or directory.resolve().name
    files = up.scene_files(directory)
    console = Console(file=sys.stderr)
    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"{directory.name} -> {claim}:{path}", total=None)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if claim in volumes:
            from splatops.local.podexec import exec_local

            result = await up.transfer(partial(exec_local, volumes[claim]), files, up.pod_dir(path), progress=show)
        else:
            await check_claim(kube, claim)
            result = await up.upload_via_pod(kube, claim, files, path, progress=show,
                                             image=image or dl.DOWNLOAD_IMAGE)
    print(f"{claim}:{path}: {len(result.sent)} file(s) uploaded ({result.bytes_sent / 1048576:.2f} MB, sha256 "
          f"checked), {len(result.skipped)} already there", flush=True)


async def cmd_upload(args: argparse.Namespace) -> int:
    from splatops.cli import download as dl
    from splatops.cli.kube import connect, kubeconfig_path

    directory = pathlib.Path(args.directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{contract.MSG_NO_IMAGES}: {directory} is not a directory")
    target = _target(args)
    async with connect(target) as kube:
        await _upload(kube, dl.local_volumes(kubeconfig_path(target)), directory, args.pvc, args.path, args.image)
    return EXIT_OK


async def check_claim(kube: Any, claim: str) -> None:
    """Fail early (before creating anything) when the claim does not exist in the namespace.

    Without RBAC to read PVCs (403) it only warns: the operator reports a missing claim later.
    """
    from splatops.cli.kube import Forbidden, NotFound

    try:
        await kube.get_claim(claim)
    except NotFound:
        raise NotFound(
            f"PersistentVolumeClaim {claim!r} not found in namespace {kube.namespace!r}: the scene must be on "
            f"an existing claim (list them with `kubectl get pvc -n {kube.namespace}`; another namespace: -n)"
        ) from None
    except Forbidden:
        print(f"warning: cannot check that PersistentVolumeClaim {claim!r} exists in namespace "
              f"{kube.namespace!r} (no permission to read PVCs); creating the training anyway "
              "(--skip-pvc-check skips this check)", file=sys.stderr, flush=True)


async def cmd_status(args: argparse.Namespace) -> int:
    from splatops.cli.kube import connect

    async with connect(_target(args)) as kube:
        resource = await kube.get_training(args.name)
    print(json.dumps(original.original_status(resource), indent=2))
    return EXIT_OK


async def _wait(kube: Any, name: str, timeout: float | None, interval: float = 1.0) -> int:
    from splatops.cli.progress import ProgressView, WaitTimeout, wait_until_done

    view = ProgressView(name)
    try:
        final = await wait_until_done(lambda: kube.get_training(name), view, interval=interval, timeout=timeout)
    except WaitTimeout as exc:
        _err(f"{name}: {exc}")
        return EXIT_FAILED
    result = original.original_status(final)
    if result["status"] == contract.STATUS_COMPLETE:
        print(f"{name}: complete: {result['model_path']} ({result['model_size_mb']} MB)", flush=True)
        return EXIT_OK
    _err(f"{name} failed: {result['error']}")
    return EXIT_FAILED


async def cmd_wait(args: argparse.Namespace) -> int:
    from splatops.cli.kube import connect

    async with connect(_target(args)) as kube:
        await kube.get_training(args.name)  # NotFound before any progress output
        return await _wait(kube, args.name, args.timeout, args.interval)


async def cmd_logs(args: argparse.Namespace) -> int:
    from splatops.cli.kube import NotFound, connect

    async with connect(_target(args)) as kube:
        resource = await kube.get_training(args.name)
        pods = await kube.training_pods(resource)
        if not pods:
            phase = (resource.get("status") or {}).get("phase") or "Pending"
            raise NotFound(f"training {args.name!r} has no trainer pod yet (phase {phase})")
        pod = pods[-1]["metadata"]["name"]
        if args.follow:
            async for chunk in kube.follow_pod_log(pod):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(await kube.pod_log(pod))
    return EXIT_OK


async def cmd_list(args: argparse.Namespace) -> int:
    from splatops.cli.kube import connect

    async with connect(_target(args)) as kube:
        items = await kube.list_trainings(all_namespaces=args.all_namespaces)
    items.sort(key=lambda r: (r["metadata"].get("namespace") or "", r["metadata"].get("creationTimestamp") or "",
                              r["metadata"]["name"]))
    if args.output in ("json", "yaml"):
        listing = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
        sys.stdout.write(json.dumps(listing, indent=4) + "\n" if args.output == "json" else original.to_yaml(listing))
    elif args.output == "original":
        print(json.dumps([{"name": r["metadata"]["name"], **original.original_status(r)} for r in items], indent=2))
    elif not items:
        where = "any namespace" if args.all_namespaces else f"namespace {kube.namespace}"
        print(f"No trainings found in {where}.", file=sys.stderr)
    else:
        print(list_table(items, wide=args.output == "wide", all_namespaces=args.all_namespaces))
    return EXIT_OK


def list_table(items: Sequence[dict[str, Any]], *, wide: bool, all_namespaces: bool) -> str:
    """kubectl's table: NAMESPACE first with -A, the extra columns last with -o wide."""
    header: tuple[str, ...] = original.TABLE_COLUMNS + (original.WIDE_COLUMNS if wide else ())
    rows = [original.table_row(r) + (original.wide_row(r) if wide else ()) for r in items]
    if all_namespaces:
        header = ("NAMESPACE", *header)
        rows = [(str(r["metadata"].get("namespace") or ""), *row) for r, row in zip(items, rows)]
    return original.format_table(rows, header)


async def _download(kube: Any, target: Any, name: str, dest: pathlib.Path, image: str | None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from splatops.cli import download as dl
    from splatops.cli.kube import kubeconfig_path

    resource = await kube.get_training(name)
    phase = (resource.get("status") or {}).get("phase")
    if phase != "Succeeded":
        raise dl.DownloadError(f"training {name!r} is {phase or 'Pending'}: there is no results.ply to download yet")
    local = dl.local_model_file(resource, dl.local_volumes(kubeconfig_path(target)))
    console = Console(file=sys.stderr)
    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(dest.name, total=dl.expected_bytes(resource))

        def show(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        # Both write a temp file, check the size, and only then rename it to dest.
        if local is not None:
            got = dl.copy_local(local, dest, show, verify=lambda n: dl.check_size(resource, n))
        else:
            got = await dl.download_via_pod(kube, resource, dest, show, image or dl.DOWNLOAD_IMAGE)
    print(f"{dest} ({got / 1048576:.2f} MB) from {name}", flush=True)
    return EXIT_OK


async def cmd_download(args: argparse.Namespace) -> int:
    from splatops.cli.kube import connect

    target = _target(args)
    async with connect(target) as kube:
        return await _download(kube, target, args.name, pathlib.Path(args.output), args.image)


def cmd_operator(args: argparse.Namespace) -> int:
    from splatops.controller import main as controller_main

    return controller_main.main()  # settings, logging (as `python -m splatops.controller`), the operator


def cmd_gateway(args: argparse.Namespace) -> int:
    from splatops.gateway import app as gateway_app

    return gateway_app.serve(args.host, args.port, _target(args))


ASYNC_COMMANDS = {
    "train": cmd_train, "status": cmd_status, "wait": cmd_wait, "logs": cmd_logs,
    "list": cmd_list, "download": cmd_download, "upload": cmd_upload,
}


def _failure(exc: BaseException) -> int | None:
    """Exit code and message for the errors a user can act on (None: not one of those)."""
    from splatops.cli.download import DownloadError
    from splatops.cli.kube import ClusterUnavailable, Conflict, NotFound
    from splatops.cli.upload import UploadError

    if isinstance(exc, (ClusterUnavailable, NotFound, Conflict, DownloadError, UploadError, FileNotFoundError)):
        _err(str(exc))
        return EXIT_FAILED
    return None


async def amain(argv: Sequence[str]) -> int:
    """The async commands (train, status, wait, logs, list, download) inside a running loop."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ASYNC_COMMANDS:
        raise ValueError(f"{args.command} is not an async command")
    try:
        return await ASYNC_COMMANDS[args.command](args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {exc}\n")
    except Exception as exc:
        code = _failure(exc)
        if code is None:
            raise
        return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "operator":
            return cmd_operator(args)
        if args.command == "gateway":
            return cmd_gateway(args)
        if args.command == "local":
            from splatops.local import run as local_run

            return local_run.main(args)
        return asyncio.run(amain(list(sys.argv[1:] if argv is None else argv)))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:
        code = _failure(exc)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
