"""The original REST API, unchanged for its clients, on top of GaussianSplatTraining resources.

    POST /scene/{scene_id}/train_gsplat?data_factor=1&max_steps=30000
    GET  /scene/{scene_id}/train_gsplat/status
    GET  /scene/{scene_id}/gsplat/model
    POST /scene/{scene_id}/colmap_ba           structure-from-motion only (a reconstructOnly training)
    GET  /scene/{scene_id}/colmap_ba/status

Each POST creates a new resource (`<scene>`, `<scene>-2`, ...) so earlier runs and their status
stay; status reads the newest run. Prerequisites are checked against the scene volume, which the
gateway mounts read-only, before anything is created: unknown scene (404), `COLMAP
reconstruction not found` and `No images found` (400), as the original pipeline reported them.

Every error is JSON `{"detail": "..."}`: 401 (authentication, when enabled), 403 (a symbolic link
or other non-file on the volume: nothing outside a scene is ever read), 409 (a download while
the newest run is still training), 429 (POST rate limit, with Retry-After), 503 (the Kubernetes
API is unreachable or slow). `/healthz` (the process answers) and `/readyz` (the API answers,
checked at most every `ready_cache_seconds`) are the pod's probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from splatops import contract
from splatops.api.layout import seed_output_path
from splatops.client import original
from splatops.client.kube import ClusterUnavailable, Conflict, NotFound, Target, connect
from splatops.gateway import files
from splatops.gateway.repository import KubeRepository, TrainingRepository
from splatops.gateway.security import Authenticator, RateLimiter
from splatops.gateway.settings import GatewaySettings
from splatops.gateway.web import build_router, source_for

T = TypeVar("T")

SCENE_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
CREATE_ATTEMPTS = 16  # concurrent POSTs of one scene each take the next free name


def scene_parts(settings: GatewaySettings, scene_id: str) -> list[str]:
    """The scene directory's path components below the mount (walked without following links)."""
    root = [] if settings.scenes_root == "." else settings.scenes_root.split("/")
    return [*root, scene_id]


def model_parts(settings: GatewaySettings, scene_id: str) -> list[str]:
    """Where the gateway's runs of a scene leave results.ply (the seed layout), below the mount."""
    return [*scene_parts(settings, scene_id), contract.OUTPUT_DIR, contract.RESULT_PLY]


def scene_path_in_volume(settings: GatewaySettings, scene_id: str) -> str:
    return scene_id if settings.scenes_root == "." else f"{settings.scenes_root}/{scene_id}"


def check_scene_id(scene_id: str) -> None:
    if not SCENE_ID.match(scene_id) or scene_id in (".", ".."):
        raise HTTPException(status_code=400, detail=f"Invalid scene_id {scene_id!r}: use letters, digits, '.', '_' and '-'")


def scene_error(settings: GatewaySettings, scene_id: str, *, need_model: bool = True) -> tuple[int, str] | None:
    """The original's prerequisite errors for a scene directory (None: trainable)."""
    try:
        problem = files.scene_problem(settings.mount_path, scene_parts(settings, scene_id), need_model=need_model)
    except files.Refused as refused:
        if refused.status == 404:
            return 404, f"Scene {scene_id} not found"
        return refused.status, f"Scene {scene_id} refused: {refused.reason}"
    return None if problem is None else (400, problem)


def check_scene(settings: GatewaySettings, scene_id: str, *, need_model: bool = True) -> None:
    """404/400/403 unless the scene id is valid and its directory trainable."""
    check_scene_id(scene_id)
    problem = scene_error(settings, scene_id, need_model=need_model)
    if problem:
        raise HTTPException(status_code=problem[0], detail=problem[1])


async def api_call(settings: GatewaySettings, what: str, call: Awaitable[T]) -> T:
    """A Kubernetes API call whose failure the client can read: 503 when the API is unreachable,
    refuses us or does not answer in time; 502 when it answers with an error."""
    try:
        async with asyncio.timeout(settings.api_timeout):
            return await call
    except TimeoutError:
        raise HTTPException(status_code=503, detail=f"the Kubernetes API did not answer within "
                            f"{settings.api_timeout:g} s ({what}); try again later") from None
    except ClusterUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"the Kubernetes API is unavailable ({what}): {exc}") from None
    except NotFound as exc:  # the trainings' type or namespace is not there: not the client's doing
        raise HTTPException(status_code=503, detail=f"the Kubernetes API answered 404: {exc} ({what}); "
                            "is the splatops CRD installed and the namespace right?") from None
    except Conflict:
        raise
    except RuntimeError as exc:
        raise HTTPException(status_code=502, detail=f"the Kubernetes API failed ({what}): {exc}") from None


class Readiness:
    """/readyz: whether the Kubernetes API answers, checked at most every `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.checked_at: float | None = None
        self.problem: str | None = None

    async def check(self, settings: GatewaySettings, repo: TrainingRepository | None) -> str | None:
        now = time.monotonic()
        if self.checked_at is not None and now - self.checked_at < self.ttl:
            return self.problem
        if repo is None:
            self.problem = "not connected to the Kubernetes API yet"
        else:
            try:
                await api_call(settings, "readiness check", repo.ping())
                self.problem = None
            except HTTPException as exc:
                self.problem = str(exc.detail)
        self.checked_at = now
        return self.problem


def create_app(settings: GatewaySettings | None = None, repository: TrainingRepository | None = None,
               target: Any = None) -> FastAPI:
    """The app. Without a repository, one over the Kubernetes API is connected at startup."""
    settings = settings or GatewaySettings()
    state: dict[str, Any] = {"repo": repository}
    auth = Authenticator(settings)
    limiter = RateLimiter(settings.post_rate_per_minute, settings.post_burst)
    app = FastAPI(
        title="splatops gateway",
        description="The original Gaussian Splatting training API, backed by GaussianSplatTraining resources.",
        version="0.1.0",
        lifespan=_connecting(state, settings, target),
    )

    def repo() -> TrainingRepository:
        return state["repo"]

    def runs(scene_id: str) -> Awaitable[list[dict[str, Any]]]:
        return api_call(settings, f"trainings of scene {scene_id}", repo().runs(scene_id))

    def client(request: Request) -> str:
        return auth.identify(request)

    def post_allowed(request: Request) -> str:
        who = auth.identify(request)
        limiter.check(who)
        return who

    async def trainings(scene_id: str) -> list[dict[str, Any]]:  # colmap_ba runs are not trainings
        return [r for r in await runs(scene_id) if not original.is_reconstruction(r)]

    _add_error_handlers(app)
    _add_probes(app, settings, Readiness(settings.ready_cache_seconds), lambda: state["repo"])
    app.include_router(build_router(lambda: source_for(state["repo"], settings.mount_path)))  # the web page
    _add_train_route(app, settings, repo, post_allowed)
    _add_colmap_routes(app, settings, repo, runs, post_allowed, client)
    _add_read_routes(app, settings, trainings, client)
    return app


def _connecting(state: dict[str, Any], settings: GatewaySettings, target: Target | None) -> Any:
    """The app's lifespan: connect to the Kubernetes API unless a repository was given."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state["repo"] is not None:
            yield
            return
        tgt = target or Target(kubeconfig=settings.kubeconfig, context=settings.context, namespace=settings.namespace)
        async with connect(tgt) as kube:
            state["repo"] = KubeRepository(kube)
            yield

    return lifespan


async def create_next_run(settings: GatewaySettings, repo: TrainingRepository, scene_id: str, base: str,
                          manifest_for: Callable[[str], dict[str, Any]], what: str) -> str:
    """Create the next free run `<base>`, `<base>-2`, ... of a scene; another replica may take a
    name meanwhile (409): then the next one."""
    taken = [r["metadata"]["name"] for r in await api_call(settings, f"trainings of scene {scene_id}", repo.runs(scene_id))]
    for _ in range(CREATE_ATTEMPTS):
        name = original.next_run_name(base, taken)
        try:
            await api_call(settings, f"create {what} {name}", repo.create(manifest_for(name)))
        except Conflict:
            taken.append(name)
            continue
        return name
    raise HTTPException(status_code=409, detail=f"could not pick a free {what} name for scene {scene_id}")


def _add_train_route(app: FastAPI, settings: GatewaySettings, repo: Callable[[], TrainingRepository],
                     post_allowed: Callable[[Request], str]) -> None:
    @app.post("/scene/{scene_id}/train_gsplat", summary="Start training (in the background)")
    async def train_gsplat(
        scene_id: str,
        data_factor: int = Query(settings.default_data_factor, description="Image downscale factor: 1, 2, 4 or 8"),
        max_steps: int = Query(settings.default_max_steps, description="Training iterations"),
        _client: str = Depends(post_allowed),
    ) -> dict[str, Any]:
        check_scene_id(scene_id)
        if data_factor not in contract.DATA_FACTORS:
            allowed = ", ".join(map(str, contract.DATA_FACTORS))
            raise HTTPException(status_code=400, detail=f"data_factor must be one of {allowed} (got {data_factor})")
        if not contract.MIN_STEPS <= max_steps <= contract.MAX_STEPS:
            raise HTTPException(status_code=400, detail=(
                f"max_steps must be between {contract.MIN_STEPS} and {contract.MAX_STEPS} (got {max_steps})"))
        check_scene(settings, scene_id)
        # No "already in progress" check here (check-then-create races between requests and
        # replicas): a run of a scene whose earlier run still writes its gsplat/ waits in Queued
        # (OutputBusy) until that one ends; the operator never runs both at once.
        path = scene_path_in_volume(settings, scene_id)
        await create_next_run(settings, repo(), scene_id, scene_id, lambda name: original.build_training(
            name, scene_id=scene_id, claim=settings.claim_name, path=path, data_factor=data_factor,
            max_steps=max_steps, created_by="splatops-gateway", output_path=seed_output_path(path),
        ), "training")
        return original.started_response(scene_id, data_factor, max_steps)


def _add_colmap_routes(app: FastAPI, settings: GatewaySettings, repo: Callable[[], TrainingRepository],
                       runs: Callable[[str], Awaitable[list[dict[str, Any]]]],
                       post_allowed: Callable[[Request], str], client: Callable[[Request], str]) -> None:
    @app.post("/scene/{scene_id}/colmap_ba", summary="COLMAP reconstruction of the scene's images (in the background)")
    async def colmap_ba(scene_id: str, _client: str = Depends(post_allowed)) -> dict[str, Any]:
        check_scene(settings, scene_id, need_model=False)  # the model is what it makes
        await create_next_run(settings, repo(), scene_id, original.reconstruction_run_base(scene_id), lambda name: original.build_training(
            name, scene_id=scene_id, claim=settings.claim_name, path=scene_path_in_volume(settings, scene_id),
            created_by="splatops-gateway", extra_spec={"reconstruct": contract.RECONSTRUCT_ALWAYS, "reconstructOnly": True},
        ), "reconstruction")
        return {"status": "processing", "scene_id": scene_id, "message": original.MSG_RECONSTRUCTION_STARTED,
                "check_status_at": f"/scene/{scene_id}/colmap_ba/status"}

    @app.get("/scene/{scene_id}/colmap_ba/status", summary="COLMAP reconstruction status (newest run)")
    async def colmap_ba_status(scene_id: str, _client: str = Depends(client)) -> dict[str, Any]:
        check_scene_id(scene_id)
        found = [r for r in await runs(scene_id) if original.is_reconstruction(r)]
        latest = original.newest(found, original.reconstruction_run_base(scene_id))
        if latest is None:
            raise HTTPException(status_code=404, detail=f"No COLMAP reconstruction found for scene {scene_id}")
        return original.reconstruction_status(latest, volume_root=settings.mount_path, scene_id=scene_id)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(files.Refused)
    async def _refused(_: Request, exc: files.Refused) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.reason})

    @app.exception_handler(ClusterUnavailable)
    async def _unavailable(_: Request, exc: ClusterUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"the Kubernetes API is unavailable: {exc}"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Still JSON for the client; the traceback goes to the log (uvicorn logs it after us).
        return JSONResponse(status_code=500, content={
            "detail": f"internal error of the gateway ({type(exc).__name__}) on {request.method} {request.url.path}; see its log"})


def _add_probes(app: FastAPI, settings: GatewaySettings, readiness: Readiness,
                repo: Callable[[], TrainingRepository | None]) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}  # liveness: the process serves requests; the API is /readyz's

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        problem = await readiness.check(settings, repo())
        if problem:
            return JSONResponse(status_code=503, content={"status": "unavailable", "detail": problem})
        return JSONResponse(content={"status": "ok"})


def _add_read_routes(app: FastAPI, settings: GatewaySettings,
                     runs: Callable[[str], Awaitable[list[dict[str, Any]]]], client: Callable[[Request], str]) -> None:
    @app.get("/scene/{scene_id}/train_gsplat/status", summary="Training status (newest run)")
    async def train_gsplat_status(scene_id: str, _client: str = Depends(client)) -> dict[str, Any]:
        check_scene_id(scene_id)
        latest = original.newest(await runs(scene_id), scene_id)
        if latest is None:
            raise HTTPException(status_code=404, detail=f"No Gaussian Splatting training found for scene {scene_id}")
        return original.original_status(latest, volume_root=settings.mount_path, scene_id=scene_id)

    @app.get("/scene/{scene_id}/gsplat/model", summary="Download the trained model (.ply)",
             response_class=StreamingResponse,
             responses={200: {"content": {"application/octet-stream": {}}}})
    async def gsplat_model(
        scene_id: str,
        previous: bool = Query(False, description="While a new run trains, download the previous model anyway"),
        _client: str = Depends(client),
    ) -> StreamingResponse:
        check_scene_id(scene_id)
        headers = model_headers(scene_id, original.newest(await runs(scene_id), scene_id), previous)
        try:
            fd, st = files.open_regular_file(settings.mount_path, model_parts(settings, scene_id))
        except files.Refused as refused:
            if refused.status == 404:
                raise HTTPException(404, f"Gaussian Splatting model not found for scene {scene_id}", headers) from None
            raise HTTPException(refused.status, f"Gaussian Splatting model of scene {scene_id} refused: "
                                f"{refused.reason}", headers) from None
        headers.update({"Content-Length": str(st.st_size),
                        "Content-Disposition": f'attachment; filename="{scene_id}_gaussian_splatting.ply"'})
        return StreamingResponse(files.read_chunks(fd), media_type="application/octet-stream", headers=headers)


def model_headers(scene_id: str, latest: Any, previous: bool) -> dict[str, str]:
    """Which run the download belongs to. While the newest run trains, results.ply is still the
    previous run's: 409 unless the client asked for it (`previous=true`)."""
    if latest is None:
        return {}
    name = str(latest["metadata"]["name"])
    state = original.original_status(latest, scene_id=scene_id)
    headers = {"X-Splatops-Training": name, "X-Splatops-Training-Status": str(state["status"])}
    if state["status"] == "processing" and not previous:
        raise HTTPException(
            status_code=409, headers=headers,
            detail=f"Gaussian Splatting training in progress for scene {scene_id} ({name}: {state['progress']}); "
            "the model file is still the previous run's, if any: wait until the status is complete, "
            "or add ?previous=true to download the previous model now",
        )
    return headers


def serve(host: str, port: int, target: Any = None) -> int:
    import uvicorn

    settings = GatewaySettings()
    if target is not None:  # CLI flags win over the environment
        target = Target(kubeconfig=target.kubeconfig or settings.kubeconfig,
                        context=target.context or settings.context,
                        namespace=target.namespace or settings.namespace)
    uvicorn.run(create_app(settings, target=target), host=host, port=port, log_level="info")
    return 0
