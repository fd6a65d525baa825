"""The gateway's web page: every training live, and per training its curves, preview, events, log
lines, downloads and the model in 3D.

    GET /                                         trainings list (static page, polls the JSON below)
    GET /trainings/{namespace}/{name}             one training's page
    GET /api/trainings                            [{name, phase, percent, step, psnr, created, ...}]
    GET /api/trainings/{namespace}/{name}         status, outputs (with URLs), events, last log lines
    GET /api/trainings/{namespace}/{name}/metrics metrics.jsonl as JSON points
    GET /api/trainings/{namespace}/{name}/files/{output}   a file the trainer wrote (status.outputs)
    GET /static/...                               the pages' scripts (bundled from web/ at build time)

Data comes from a `WebSource`: the Kubernetes API plus the scene volume the gateway mounts
(`KubeWebSource`), or one directory of trainer outputs (`DirectorySource`, `splatops view FILE`).
Files are found through the training's status (status.outputs, status.modelPath; while it runs,
the output directory `splatops.api.layout` gives it: `original.model_path`), never by a path from the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import pathlib
import posixpath
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from splatops import contract, names
from splatops.client import original
from splatops.client.kube import ClientKube, ClusterUnavailable, Forbidden, NotFound

STATIC = pathlib.Path(__file__).parent / "static"
LOG_LINES = 40
EVENTS = 30
DOWNLOAD_SUFFIX = {"ply": ".ply", "spz": ".spz", "splat": ".splat", "ply_compressed": ".compressed.ply",
                   "preview": ".preview.png", "metrics": ".metrics.jsonl"}
# Beside the model while the training runs (before status.outputs lists them).
LIVE_FILES = {"preview": contract.PREVIEW_PNG, "metrics": contract.METRICS_JSONL}
MEDIA = {".png": "image/png", ".jsonl": "application/x-ndjson"}


class WebSource(Protocol):
    namespace: str

    async def trainings(self) -> list[dict[str, Any]]: ...

    async def training(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def events(self, namespace: str, name: str) -> list[dict[str, Any]]: ...

    async def log_tail(self, namespace: str, name: str) -> list[str]: ...

    def volume_file(self, rel: str) -> pathlib.Path | None:
        """The file at a volume-relative path, if it exists inside the volume."""


def inside(root: pathlib.Path, rel: str) -> pathlib.Path | None:
    """`root/rel` if it is a file that stays inside `root` after resolving links, else None."""
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        return None
    base = root.resolve()
    path = (base / rel).resolve()
    return path if path.is_relative_to(base) and path.is_file() else None


# --- pure views of a resource ---------------------------------------------------------------------


def summary(resource: dict[str, Any]) -> dict[str, Any]:
    """One row of the list."""
    meta, status = resource.get("metadata") or {}, resource.get("status") or {}
    progress = status.get("progress") or {}
    phase = status.get("phase") or "Pending"
    return {
        "namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "phase": phase,
        "percent": progress.get("percent", 100.0 if phase == "Succeeded" else 0.0),
        "step": progress.get("step"), "maxSteps": progress.get("maxSteps", (resource.get("spec") or {}).get("maxSteps")),
        "psnr": progress.get("psnr", (status.get("metrics") or {}).get("psnr")),
        "created": meta.get("creationTimestamp"), "message": status.get("message") or progress.get("message") or "",
    }


def model_dir(resource: dict[str, Any]) -> str:
    """The volume-relative directory of the training's outputs (the model's directory)."""
    return posixpath.dirname(original.model_path(resource) or "")


def output_entries(resource: dict[str, Any], exists: Callable[[str], bool]) -> list[dict[str, Any]]:
    """status.outputs, else (still running) the live files beside the model that exist already."""
    listed = [o for o in (resource.get("status") or {}).get("outputs") or [] if isinstance(o, dict) and o.get("path")]
    if not listed:
        directory = model_dir(resource)  # "" (no valid spec): nothing to look for
        listed = [{"name": n, "path": posixpath.join(directory, f), "bytes": None}
                  for n, f in LIVE_FILES.items() if directory]
    return [o for o in listed if exists(o["path"])]


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """metrics.jsonl's points in step order. A line whose step goes back starts over from there
    (a resumed run repeats the steps after its checkpoint; a fresh run in the same directory)."""
    points: list[dict[str, Any]] = []
    for line in text.splitlines():
        p = contract.parse_progress_line(line)
        if p is None:
            continue
        while points and (points[-1]["step"] > p.step or points[-1]["step"] == p.step and points[-1]["event"] == p.event):
            points.pop()
        points.append({"event": p.event, "step": p.step, "loss": p.loss, "psnr": p.psnr, "ssim": p.ssim,
                       "numGaussians": p.num_gaussians, "stepsPerSec": p.steps_per_sec, "elapsedS": p.elapsed_s})
    return points


def event_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{
        "time": e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp"),
        "type": e.get("type", ""), "reason": e.get("reason", ""), "message": e.get("message", ""),
    } for e in events]
    return sorted(rows, key=lambda r: r["time"] or "", reverse=True)[:EVENTS]


def page(template: str, **values: str) -> HTMLResponse:
    text = (STATIC / template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


# --- the router -------------------------------------------------------------------------------------


def build_router(source: Callable[[], WebSource | None]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def src() -> WebSource:
        s = source()
        if s is None:
            raise HTTPException(status_code=503, detail="the web page needs the Kubernetes API (not connected)")
        return s

    async def found(namespace: str, name: str) -> tuple[WebSource, dict[str, Any], list[dict[str, Any]]]:
        """The source, the training and its output files that exist (404 if there is no such training)."""
        s = src()
        resource = await s.training(namespace, name)
        if resource is None:
            raise HTTPException(status_code=404, detail=f"{names.KIND} {namespace}/{name} not found")
        return s, resource, output_entries(resource, lambda rel: s.volume_file(rel) is not None)

    _add_pages(router, found)
    _add_api(router, src, found)
    return router


def _add_pages(router: APIRouter, found: Callable[..., Any]) -> None:
    @router.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return page("index.html", root="./")

    @router.get("/trainings/{namespace}/{name}", response_class=HTMLResponse)
    async def training_page(namespace: str, name: str) -> HTMLResponse:
        await found(namespace, name)
        return page("training.html", root="../../", namespace=namespace, name=name,
                    api=f"../../api/trainings/{namespace}/{name}")

    @router.get("/static/{path:path}")
    async def static(path: str) -> FileResponse:
        file = inside(STATIC, path)
        if file is None:
            hint = " (the web bundle is built by scripts/setup: npm ci && npm run build in web/)" if path.startswith("dist/") else ""
            raise HTTPException(status_code=404, detail=f"no static file {path!r}{hint}")
        return FileResponse(file, headers={"Cache-Control": "no-cache"})


def _add_api(router: APIRouter, src: Callable[[], WebSource], found: Callable[..., Any]) -> None:
    @router.get("/api/trainings")
    async def trainings() -> dict[str, Any]:
        s = src()
        items = [summary(r) for r in await s.trainings()]
        return {"namespace": s.namespace, "items": sorted(items, key=lambda i: i["created"] or "", reverse=True)}

    @router.get("/api/trainings/{namespace}/{name}")
    async def training(namespace: str, name: str) -> dict[str, Any]:
        s, resource, outputs = await found(namespace, name)
        # URLs relative to the training's page (works behind any path prefix or port-forward);
        # live files have no recorded size yet.
        files = [{**o, "url": f"../../api/trainings/{namespace}/{name}/files/{o['name']}",
                  "download": name + DOWNLOAD_SUFFIX.get(o["name"], ""),
                  "bytes": o["bytes"] if o["bytes"] is not None else s.volume_file(o["path"]).stat().st_size}
                 for o in outputs]
        preview = next((o for o in files if o["name"] == "preview"), None)
        return {
            **summary(resource), "progress": (resource.get("status") or {}).get("progress"),
            "outputs": [o for o in files if o["name"] not in LIVE_FILES],
            "preview": f"{preview['url']}?v={preview['bytes']}" if preview else None,
            "events": event_rows(await s.events(namespace, name)),
            "logs": await s.log_tail(namespace, name),
        }

    @router.get("/api/trainings/{namespace}/{name}/metrics")
    async def metrics(namespace: str, name: str) -> dict[str, Any]:
        s, _, outputs = await found(namespace, name)
        path = next((s.volume_file(o["path"]) for o in outputs if o["name"] == "metrics"), None)
        text = path.read_text(encoding="utf-8", errors="replace") if path is not None else ""
        return {"points": parse_metrics(text)}

    @router.get("/api/trainings/{namespace}/{name}/files/{output}")
    async def output_file(namespace: str, name: str, output: str) -> FileResponse:
        s, _, outputs = await found(namespace, name)
        entry = next((o for o in outputs if o["name"] == output), None)
        file = s.volume_file(entry["path"]) if entry else None
        if file is None:
            raise HTTPException(status_code=404, detail=f"{namespace}/{name} has no {output!r} output")
        return FileResponse(file, media_type=MEDIA.get(file.suffix, "application/octet-stream"),
                            filename=name + DOWNLOAD_SUFFIX.get(output, file.suffix),
                            headers={"Cache-Control": "no-cache"})


# --- sources ----------------------------------------------------------------------------------------


def source_for(repository: Any, mount: str) -> WebSource | None:
    """The web page's source for the gateway's repository (None until it is connected)."""
    kube = getattr(repository, "kube", None)
    return KubeWebSource(kube, mount) if kube is not None else None


def file_app(path: pathlib.Path) -> Any:
    """A FastAPI app serving only the web page, for one model file or directory."""
    from fastapi import FastAPI

    app = FastAPI(title="splatops view", docs_url=None, redoc_url=None, openapi_url=None)
    source = DirectorySource(path)
    app.include_router(build_router(lambda: source))
    app.state.page = f"trainings/{source.namespace}/{source.name}"
    return app


class KubeWebSource:
    """Trainings from the Kubernetes API; their files from the scene volume mounted at `mount`."""

    def __init__(self, kube: ClientKube, mount: str | pathlib.Path) -> None:
        self.kube, self.mount = kube, pathlib.Path(mount)
        self.namespace = kube.namespace

    async def trainings(self) -> list[dict[str, Any]]:
        return await self.kube.list_trainings()

    async def training(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.in_namespace(namespace).get_training(name)
        except (NotFound, Forbidden):  # another namespace the gateway may not read: not found here
            return None

    async def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        try:
            return await self.kube.in_namespace(namespace).events(name)
        except (ClusterUnavailable, LookupError, RuntimeError, OSError, ValueError):
            return []  # events are a nicety (no RBAC to list them, say): the page shows everything else

    async def log_tail(self, namespace: str, name: str) -> list[str]:
        kube = self.kube.in_namespace(namespace)
        try:
            pods = await kube.training_pods(await kube.get_training(name))  # by the training's uid
            text = await kube.pod_log(pods[-1]["metadata"]["name"]) if pods else ""
        except (ClusterUnavailable, NotFound):
            return []
        return text.splitlines()[-LOG_LINES:]

    def volume_file(self, rel: str) -> pathlib.Path | None:
        return inside(self.mount, rel)


class DirectorySource:
    """One model directory (or one model file) as a finished training named after it: for
    `splatops view FILE|DIR` without a cluster."""

    NAMESPACE = "local"

    def __init__(self, path: pathlib.Path) -> None:
        path = path.resolve()
        self.root = path if path.is_dir() else path.parent
        self.only = None if path.is_dir() else path.name
        self.name = (self.root.name if path.is_dir() else path.stem).lower().replace("_", "-") or "model"
        self.namespace = self.NAMESPACE

    def _outputs(self) -> list[dict[str, Any]]:
        kinds = {f: k for k, f in contract.FORMAT_FILES.items()}
        if self.only is not None:  # one model file: its format from its name
            suffix = ".compressed.ply" if self.only.endswith(".compressed.ply") else pathlib.Path(self.only).suffix
            kinds = {self.only: next((k for k, f in contract.FORMAT_FILES.items() if f.endswith(suffix)), "ply")}
        kinds |= {f: k for k, f in LIVE_FILES.items()}
        return [{"name": kind, "path": file, "bytes": (self.root / file).stat().st_size}
                for file, kind in kinds.items() if (self.root / file).is_file()]

    def _resource(self) -> dict[str, Any]:
        log = self.root / contract.TRAINING_LOG
        last = contract.last_progress((self.root / contract.METRICS_JSONL).read_text(errors="replace")) \
            if (self.root / contract.METRICS_JSONL).is_file() else None
        progress = {"step": last.step, "maxSteps": last.max_steps, "percent": last.percent, "loss": last.loss,
                    "psnr": last.psnr, "numGaussians": last.num_gaussians} if last else None
        return {
            "metadata": {"name": self.name, "namespace": self.NAMESPACE,
                         "creationTimestamp": _mtime(log if log.is_file() else self.root)},
            "spec": {}, "status": {"phase": "Succeeded", "progress": progress, "outputs": self._outputs(),
                                   "message": str(self.root / (self.only or ""))},
        }

    async def trainings(self) -> list[dict[str, Any]]:
        return [self._resource()]

    async def training(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._resource() if (namespace, name) == (self.NAMESPACE, self.name) else None

    async def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return []

    async def log_tail(self, namespace: str, name: str) -> list[str]:
        log = self.root / contract.TRAINING_LOG
        return log.read_text(errors="replace").splitlines()[-LOG_LINES:] if log.is_file() else []

    def volume_file(self, rel: str) -> pathlib.Path | None:
        return inside(self.root, rel)


def _mtime(path: pathlib.Path) -> str:
    import datetime

    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.asynccontextmanager
async def serving(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on this event loop while the block runs; yields its base URL.
    Port 0, or a port already taken, serves on a free port instead."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise why it did not start
                raise RuntimeError("the web server stopped while starting")
            await asyncio.sleep(0.05)
        yield f"http://{host}:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
        sock.close()
