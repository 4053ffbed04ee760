"""Admin endpoints, mounted only when ``admin_key`` is set (else every /admin path is 404),
and only for callers presenting that key (see ``service/serving/http/security.py``)."""

from fastapi import APIRouter, Depends

from service.serving.http.responses import OrjsonResponse
from service.serving.http.routes.dependencies import Service
from service.serving.http.security import require_admin

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/models/{name}/reload", response_class=OrjsonResponse,
             summary="Rescan one model's versions in the store and apply the changes")
async def reload_model(name: str, service: Service) -> OrjsonResponse:
    """New or changed versions are loaded and warmed, then served; versions gone from the
    store are unloaded once their in-flight requests finish. 404 for a name the store does
    not hold."""
    return OrjsonResponse({"models": await service.reload(name)})


@router.post("/reload", response_class=OrjsonResponse, summary="Rescan every model")
async def reload_all(service: Service) -> OrjsonResponse:
    return OrjsonResponse({"models": await service.reload()})
