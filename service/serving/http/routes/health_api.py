"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.serving.http.responses import OrjsonResponse
from service.serving.http.routes.dependencies import Service
from service.serving.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", response_class=OrjsonResponse, summary="Liveness")
async def healthz() -> OrjsonResponse:
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz", response_class=OrjsonResponse, summary="Readiness",
            responses={503: {"description": "loading, a model failed, or draining"}})
async def readyz(service: Service) -> OrjsonResponse:
    """200 only when the initial load has finished, every model (the default model among
    them) has a version serving, and the server is not shutting down."""
    service.check_ready()
    return OrjsonResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
