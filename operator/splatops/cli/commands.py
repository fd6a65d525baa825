"""The CLI's cluster commands: train, status, wait, logs, list, download, upload.

Each takes the parsed arguments and returns the exit code; errors a user can act on are raised
(`splatops.cli.main` prints them and exits 1), bad values as `UsageError` (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from splatops import contract, names
from splatops.cli.errors import EXIT_FAILED, EXIT_OK, UsageError, err
from splatops.client import download as dl
from splatops.client import original
from splatops.client import upload as up
from splatops.client.kube import ClientKube, Forbidden, NotFound, Target, connect, kubeconfig_path
from splatops.client.progress import ProgressView, WaitTimeout, wait_until_done
from splatops.client.scenes import scene_problem


def target_of(args: argparse.Namespace) -> Target:
    return Target(kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace)


def training_manifest(args: argparse.Namespace, name: str, namespace: str | None) -> dict[str, Any]:
    import pydantic

    resources = {k: v for k, v in (("gpus", args.gpus), ("memory", args.memory), ("cpu", args.cpu)) if v is not None}
    extra: dict[str, Any] = {"resources": resources} if resources else {}
    if args.queue:
        extra["queueName"] = args.queue
    if args.reconstruct:
        extra["reconstruct"] = args.reconstruct
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
    local_dir = local_scene_dir(args.scene)
    if local_dir is not None:  # train ./dir: upload it, then train the uploaded copy
        args.scene = local_dir.resolve().name
        args.path = args.path or args.scene
    if args.dry_run:
        name = args.name or original.run_name(args.scene, 1)
        sys.stdout.write(original.to_yaml(training_manifest(args, name, args.namespace)))
        return EXIT_OK
    target = target_of(args)
    training_manifest(args, args.name or original.run_name(args.scene, 1), None)  # validate before connecting
    async with connect(target) as kube:
        volumes = dl.local_volumes(kubeconfig_path(target))
        if local_dir is not None:
            await _upload(kube, volumes, local_dir, args.pvc, args.path, None)
        elif args.pvc in volumes:  # a local volume: check the scene as the original pipeline did
            problem = scene_problem(pathlib.Path(volumes[args.pvc]) / (args.path or args.scene),
                                    need_model=args.reconstruct == contract.RECONSTRUCT_NEVER)
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


async def _upload(kube: ClientKube, volumes: dict[str, str], directory: pathlib.Path, claim: str,
                  path: str | None, image: str | None) -> None:
    """Check the scene as the trainer would, then copy it into the claim (a local volume directly)."""
    problem = scene_problem(directory)
    if problem:
        raise FileNotFoundError(problem)
    path = path or directory.resolve().name
    files = up.scene_files(directory)
    with transfer_bar(f"{directory.name} -> {claim}:{path}", None) as show:
        if claim in volumes:
            from splatops.local.podexec import exec_local  # `splatops local`'s volumes: no pod

            result = await up.transfer(functools.partial(exec_local, volumes[claim]), files, up.pod_dir(path), progress=show)
        else:
            await check_claim(kube, claim)
            result = await up.upload_via_pod(kube, claim, files, path, progress=show,
                                             image=image or dl.DOWNLOAD_IMAGE)
    print(f"{claim}:{path}: {len(result.sent)} file(s) uploaded ({result.bytes_sent / 1048576:.2f} MB, sha256 "
          f"checked), {len(result.skipped)} already there", flush=True)


async def cmd_upload(args: argparse.Namespace) -> int:
    directory = pathlib.Path(args.directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{contract.MSG_NO_IMAGES}: {directory} is not a directory")
    target = target_of(args)
    async with connect(target) as kube:
        await _upload(kube, dl.local_volumes(kubeconfig_path(target)), directory, args.pvc, args.path, args.image)
    return EXIT_OK


async def check_claim(kube: ClientKube, claim: str) -> None:
    """Fail early (before creating anything) when the claim does not exist in the namespace.

    Without RBAC to read PVCs (403) it only warns: the operator reports a missing claim later.
    """
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
    async with connect(target_of(args)) as kube:
        resource = await kube.get_training(args.name)
    print(json.dumps(original.original_status(resource), indent=2))
    return EXIT_OK


async def _wait(kube: ClientKube, name: str, timeout: float | None, interval: float = 1.0) -> int:
    view = ProgressView(name)
    try:
        final = await wait_until_done(lambda: kube.get_training(name), view, interval=interval, timeout=timeout)
    except WaitTimeout as exc:
        err(f"{name}: {exc}")
        return EXIT_FAILED
    result = original.original_status(final)
    if result["status"] == contract.STATUS_COMPLETE:
        print(f"{name}: complete: {result['model_path']} ({result['model_size_mb']} MB)", flush=True)
        return EXIT_OK
    err(f"{name} failed: {result['error']}")
    return EXIT_FAILED


async def cmd_wait(args: argparse.Namespace) -> int:
    async with connect(target_of(args)) as kube:
        await kube.get_training(args.name)  # NotFound before any progress output
        return await _wait(kube, args.name, args.timeout, args.interval)


async def cmd_logs(args: argparse.Namespace) -> int:
    async with connect(target_of(args)) as kube:
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
    async with connect(target_of(args)) as kube:
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


async def _download(kube: ClientKube, target: Target, name: str, dest: pathlib.Path, image: str | None) -> int:
    resource = await kube.get_training(name)
    phase = (resource.get("status") or {}).get("phase")
    if phase != "Succeeded":
        raise dl.DownloadError(f"training {name!r} is {phase or 'Pending'}: there is no results.ply to download yet")
    local = dl.local_model_file(resource, dl.local_volumes(kubeconfig_path(target)))
    with transfer_bar(dest.name, dl.expected_bytes(resource)) as show:
        # Both write a temp file, check the size, and only then rename it to dest.
        if local is not None:
            got = dl.copy_local(local, dest, show, verify=lambda n: dl.check_size(resource, n))
        else:
            got = await dl.download_via_pod(kube, resource, dest, show, image or dl.DOWNLOAD_IMAGE)
    print(f"{dest} ({got / 1048576:.2f} MB) from {name}", flush=True)
    return EXIT_OK


@contextlib.contextmanager
def transfer_bar(description: str, total: float | None) -> Iterator[Callable[[int, int | None], None]]:
    """A bytes progress bar on stderr (a terminal only); yields the (done, total) callback."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console = Console(file=sys.stderr)
    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)

        def show(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield show


async def cmd_download(args: argparse.Namespace) -> int:
    target = target_of(args)
    async with connect(target) as kube:
        return await _download(kube, target, args.name, pathlib.Path(args.output), args.image)


