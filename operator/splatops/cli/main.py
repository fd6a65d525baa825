"""`splatops` / `kubectl splat`: run the operator, train, watch, fetch results, serve the REST API.

Exit codes: 0 success; 1 the training failed or an operation failed (missing cluster, resource,
scene, a failed download); 2 usage errors (bad flags or values). `wait` exits 0 on Succeeded and
1 on Failed, so scripts can chain `splatops wait NAME && splatops download NAME -o x.ply`.

The cluster commands live in `splatops.cli.commands`; `operator`, `gateway`, `view` and `local`
hand over to those parts' entry points. Each is imported only when its command runs (`splatops
local` must set KUBECONFIG before the Kubernetes client is first imported).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from splatops import __version__, contract
from splatops.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, err  # noqa: F401 (EXIT_OK: for scripts, tests)

ASYNC_COMMANDS = ("train", "status", "wait", "logs", "list", "download", "upload")


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
    p.add_argument("--reconstruct", choices=contract.RECONSTRUCT_MODES,
                   help="structure-from-motion first: IfMissing (default: when the scene has no COLMAP model), Always, Never")
    p.add_argument("--name", help="resource name (default: SCENE, then SCENE-2, SCENE-3, ...)")
    p.add_argument("--wait", action="store_true", help="wait until done, showing progress")
    p.add_argument("--download", metavar="FILE", help="after success, download results.ply to FILE (implies --wait)")
    p.add_argument("--dry-run", action="store_true", help="print the resource's YAML instead of creating it (no cluster access)")
    p.add_argument("--skip-pvc-check", action="store_true",
                   help="do not check that the claim exists first (for users who may not read PVCs)")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    _kube_flags(p)


def _watch_commands(sub: Any) -> None:
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


def _transfer_commands(sub: Any) -> None:
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


def _serving_commands(sub: Any) -> None:
    from splatops.cli import view as view_cmd
    from splatops.local import run as local_run

    p = sub.add_parser("gateway", help="serve the original REST API (uvicorn)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    _kube_flags(p)

    p = sub.add_parser("view", help="open the web page of a training, or of a model file (results.spz/.ply) or directory")
    view_cmd.add_arguments(p)
    _kube_flags(p)

    local_run.add_arguments(sub.add_parser("local", help="run everything on this machine: API, operator, trainer"))


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
    sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    _train_arguments(sub.add_parser("train", help="create a GaussianSplatTraining for a scene on a PVC"))
    _watch_commands(sub)
    _transfer_commands(sub)
    _serving_commands(sub)
    return parser


# --- running a command ---------------------------------------------------------------------------


def _failure(exc: BaseException) -> int | None:
    """Exit code and message for the errors a user can act on (None: not one of those)."""
    from splatops.client.download import DownloadError
    from splatops.client.kube import ClusterUnavailable, Conflict, NotFound
    from splatops.client.upload import UploadError

    if isinstance(exc, (ClusterUnavailable, NotFound, Conflict, DownloadError, UploadError, FileNotFoundError)):
        err(str(exc))
        return EXIT_FAILED
    return None


async def amain(argv: Sequence[str]) -> int:
    """The cluster commands (train, status, wait, logs, list, download, upload) inside a running loop."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ASYNC_COMMANDS:
        raise ValueError(f"{args.command} is not an async command")
    from splatops.cli import commands

    try:
        return await getattr(commands, f"cmd_{args.command}")(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {exc}\n")
    except Exception as exc:
        code = _failure(exc)
        if code is None:
            raise
        return code


def _run_entry_point(args: argparse.Namespace) -> int:
    """`operator`, `gateway`, `view` and `local`: each part's own entry point."""
    if args.command == "operator":
        from splatops.controller import main as controller_main

        return controller_main.main()  # settings, logging (as `python -m splatops.controller`), the operator
    if args.command == "local":
        from splatops.local import run as local_run

        return local_run.main(args)
    from splatops.cli.commands import target_of

    if args.command == "gateway":
        from splatops.gateway import app as gateway_app

        return gateway_app.serve(args.host, args.port, target_of(args))
    from splatops.cli import view as view_cmd

    return view_cmd.main(args, target_of(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in ASYNC_COMMANDS:
            return _run_entry_point(args)
        return asyncio.run(amain(list(sys.argv[1:] if argv is None else argv)))
    except KeyboardInterrupt:
        err("interrupted")
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
