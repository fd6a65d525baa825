"""The original REST API, unchanged for its clients, on top of GaussianSplatTraining resources.

    POST /scene/{scene_id}/train_gsplat?data_factor=1&max_steps=30000
    GET  /scene/{scene_id}/train_gsplat/status
    GET  /scene/{scene_id}/gsplat/model

Each POST creates a new resource (`<scene>`, `<scene>-2`, ...) so earlier runs and their status
stay; status reads the newest run. Prerequisites are checked against the scene volume, which the
gateway mounts read-only, before anything is created: unknown scene (404), `COLMAP
reconstruction not found` and `No images found` (400), as the original pipeline reported them.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse

from splatops import contract
from splatops.cli import original
from splatops.cli.kube import Conflict
from splatops.gateway.repository import KubeRepository, TrainingRepository
from splatops.gateway.settings import GatewaySettings
from splatops.gateway.web import build_router, source_for

DATA_FACTORS = (1, 2, 4, 8)
SCENE_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
CREATE_ATTEMPTS = 5


def scene_dir(settings: GatewaySettings, scene_id: str) -> pathlib.Path:
    return pathlib.Path(settings.mount_path) / settings.scenes_root / scene_id


def scene_path_in_volume(settings: GatewaySettings, scene_id: str) -> str:
    return scene_id if settings.scenes_root == "." else f"{settings.scenes_root}/{scene_id}"


def check_scene_id(scene_id: str) -> None:
    if not SCENE_ID.match(scene_id) or scene_id in (".", ".."):
        raise HTTPException(status_code=400, detail=f"Invalid scene_id {scene_id!r}: use letters, digits, '.', '_' and '-'")


def scene_error(directory: pathlib.Path, scene_id: str) -> tuple[int, str] | None:
    """The original's prerequisite errors for a scene directory (None: trainable)."""
    if not directory.is_dir():
        return 404, f"Scene {scene_id} not found"
    from splatops.cli.main import scene_problem

    problem = scene_problem(directory)
    if problem is None:
        return None
    return 400, contract.MSG_COLMAP_NOT_FOUND if problem.startswith(contract.MSG_COLMAP_NOT_FOUND) else contract.MSG_NO_IMAGES


def create_app(settings: GatewaySettings | None = None, repository: TrainingRepository | None = None,
               target: Any = None) -> FastAPI:
    """The app. Without a repository, one over the Kubernetes API is connected at startup."""
    settings = settings or GatewaySettings()
    state: dict[str, Any] = {"repo": repository}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state["repo"] is not None:
            yield
            return
        from splatops.cli.kube import Target, connect

        tgt = target or Target(kubeconfig=settings.kubeconfig, context=settings.context, namespace=settings.namespace)
        async with connect(tgt) as kube:
            state["repo"] = KubeRepository(kube)
            yield

    app = FastAPI(
        title="splatops gateway",
        description="The original Gaussian Splatting training API, backed by GaussianSplatTraining resources.",
        version="0.1.0",
        lifespan=lifespan,
    )

    def repo() -> TrainingRepository:
        return state["repo"]

    app.include_router(build_router(lambda: source_for(state["repo"], settings.mount_path)))  # the web page

    @app.post("/scene/{scene_id}/train_gsplat", summary="Start training (in the background)")
    async def train_gsplat(
        scene_id: str,
        data_factor: int = Query(settings.default_data_factor, description="Image downscale factor: 1, 2, 4 or 8"),
        max_steps: int = Query(settings.default_max_steps, description="Training iterations"),
    ) -> dict[str, Any]:
        check_scene_id(scene_id)
        if data_factor not in DATA_FACTORS:
            raise HTTPException(status_code=400, detail=f"data_factor must be one of 1, 2, 4, 8 (got {data_factor})")
        if not 1 <= max_steps <= 1_000_000:
            raise HTTPException(status_code=400, detail=f"max_steps must be between 1 and 1000000 (got {max_steps})")
        problem = scene_error(scene_dir(settings, scene_id), scene_id)
        if problem:
            raise HTTPException(status_code=problem[0], detail=problem[1])
        runs = await repo().runs(scene_id)
        latest = original.newest(runs, scene_id)
        if latest is not None and not original.is_terminal(latest):
            raise HTTPException(
                status_code=409,
                detail=f"Gaussian Splatting training already in progress for scene {scene_id} "
                f"({latest['metadata']['name']}); see /scene/{scene_id}/train_gsplat/status",
            )
        names_taken = [r["metadata"]["name"] for r in runs]
        for _ in range(CREATE_ATTEMPTS):  # another replica may take the same name: try the next
            name = original.next_run_name(scene_id, names_taken)
            manifest = original.build_training(
                name, scene_id=scene_id, claim=settings.claim_name,
                path=scene_path_in_volume(settings, scene_id), data_factor=data_factor,
                max_steps=max_steps, created_by="splatops-gateway",
            )
            try:
                await repo().create(manifest)
            except Conflict:
                names_taken.append(name)
                continue
            return original.started_response(scene_id, data_factor, max_steps)
        raise HTTPException(status_code=409, detail=f"could not pick a free training name for scene {scene_id}")

    @app.get("/scene/{scene_id}/train_gsplat/status", summary="Training status (newest run)")
    async def train_gsplat_status(scene_id: str) -> dict[str, Any]:
        check_scene_id(scene_id)
        latest = original.newest(await repo().runs(scene_id), scene_id)
        if latest is None:
            raise HTTPException(status_code=404, detail=f"No Gaussian Splatting training found for scene {scene_id}")
        return original.original_status(latest, volume_root=settings.mount_path, scene_id=scene_id)

    @app.get("/scene/{scene_id}/gsplat/model", summary="Download the trained model (.ply)",
             response_class=FileResponse)
    async def gsplat_model(scene_id: str) -> FileResponse:
        check_scene_id(scene_id)
        path = scene_dir(settings, scene_id) / contract.OUTPUT_DIR / contract.RESULT_PLY
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"Gaussian Splatting model not found for scene {scene_id}")
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{scene_id}_gaussian_splatting.ply")

    return app


def serve(host: str, port: int, target: Any = None) -> int:
    import uvicorn

    from splatops.cli.kube import Target

    settings = GatewaySettings()
    if target is not None:  # CLI flags win over the environment
        target = Target(kubeconfig=target.kubeconfig or settings.kubeconfig,
                        context=target.context or settings.context,
                        namespace=target.namespace or settings.namespace)
    uvicorn.run(create_app(settings, target=target), host=host, port=port, log_level="info")
    return 0
