"""`splatops view NAME|FILE|DIR`: open the web page of a training, or of a model on disk.

- A file or directory (`results.spz`, `results.ply`, a training's output directory): a local
  server shows it (viewer, and the curves/preview/log when they are beside it). No cluster.
- A training of `splatops local --keep-running` (its kubeconfig names local volumes): the gateway's
  web page served here, reading the local volume.
- A training on a cluster: `kubectl port-forward` to the chart's gateway Service.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import shutil
import subprocess
import sys
import webbrowser
from typing import Any

DEFAULT_PORT = 8765
DEFAULT_SERVICE = "splatops-gateway"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="NAME|FILE", help="a training's name, or a model file / output directory")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"local port (default {DEFAULT_PORT}; taken: any free one)")
    p.add_argument("--service", default=DEFAULT_SERVICE, help="the gateway's Service on a cluster (chart: <release>-gateway)")
    p.add_argument("--service-namespace", help="the gateway Service's namespace (default: the trainings')")
    p.add_argument("--no-browser", action="store_true", help="print the URL only")


def _open(url: str, args: argparse.Namespace) -> None:
    print(f"web page: {url}  (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        webbrowser.open(url)


async def _serve(app: Any, page: str, args: argparse.Namespace) -> int:
    from splatops.gateway.web import serving

    async with serving(app, port=args.port) as base:
        _open(base + page, args)
        await asyncio.Event().wait()
    return 0


def serve_path(path: pathlib.Path, args: argparse.Namespace) -> int:
    from splatops.gateway.web import file_app

    app = file_app(path)
    return asyncio.run(_serve(app, app.state.page, args))


def serve_local(volumes: dict[str, str], target: Any, args: argparse.Namespace) -> int:
    from splatops.gateway.app import create_app
    from splatops.gateway.settings import GatewaySettings

    if len(volumes) != 1:
        raise SystemExit(f"splatops view: expected one local volume, found {sorted(volumes)}")
    (claim, root), = volumes.items()
    settings = GatewaySettings(mount_path=root, claim_name=claim, kubeconfig=target.kubeconfig, namespace=target.namespace)
    app = create_app(settings, target=target)
    namespace = target.namespace or "default"
    return asyncio.run(_serve(app, f"trainings/{namespace}/{args.target}", args))


def port_forward(target: Any, args: argparse.Namespace) -> int:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("splatops view: kubectl is needed to reach the cluster's gateway (port-forward); "
              "or download the model and run `splatops view model.spz`", file=sys.stderr)
        return 1
    cmd = [kubectl, "port-forward", f"svc/{args.service}", f"{args.port}:80"]
    for flag, value in (("--kubeconfig", target.kubeconfig), ("--context", target.context),
                        ("-n", args.service_namespace or target.namespace)):
        if value:
            cmd += [flag, value]
    ns = target.namespace or "default"
    with subprocess.Popen(cmd) as proc:
        _open(f"http://127.0.0.1:{args.port}/trainings/{ns}/{args.target}", args)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return 130


def main(args: argparse.Namespace, target: Any) -> int:
    from splatops.client import download as dl
    from splatops.client.kube import kubeconfig_path

    path = pathlib.Path(args.target)
    if path.exists():
        return serve_path(path, args)
    volumes = dl.local_volumes(kubeconfig_path(target))
    if volumes:
        return serve_local(volumes, target, args)
    return port_forward(target, args)
