"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import NotReady
from service.serving.metrics import CONTENT_TYPE
from service.serving.responses import OrjsonResponse
from service.serving.routes.deps import Service

router = APIRouter(tags=["health"])


@router.get("/healthz", response_class=OrjsonResponse, summary="Liveness")
async def healthz() -> OrjsonResponse:
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz", response_class=OrjsonResponse, summary="Readiness",
            responses={503: {"description": "loading, a model failed, or draining"}})
async def readyz(service: Service) -> OrjsonResponse:
    """200 only when the initial load has finished, every model (the default model among
    them) has a version serving, and the server is not shutting down."""
    repo = service.repository
    if not service.accepting:
        raise NotReady("server is shutting down", code="shutting_down")
    if not repo.ready:
        states = ", ".join(f"{m['name']}/{m['version']}: {m['state']}"
                           + (f" ({m['reason']})" if m["reason"] else "")
                           for m in repo.describe())
        if not states:
            states = "no model found in the store" if repo.loaded.is_set() else "loading"
        default = repo.default_model_problem() if repo.loaded.is_set() else None
        raise NotReady(f"not ready: {default + '; ' if default else ''}{states}")
    return OrjsonResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
