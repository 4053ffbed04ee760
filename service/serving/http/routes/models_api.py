"""GET /models and GET /models/{name}: versions, labels, input spec, backend, load state."""

from fastapi import APIRouter

from service.serving.http.responses import OrjsonResponse
from service.serving.http.routes.dependencies import Service

router = APIRouter(tags=["models"])


@router.get("/models", response_class=OrjsonResponse, summary="Every model version")
async def list_models(service: Service) -> OrjsonResponse:
    return OrjsonResponse(service.models())


@router.get("/models/{name}", response_class=OrjsonResponse, summary="One model's versions")
async def get_model(name: str, service: Service) -> OrjsonResponse:
    return OrjsonResponse(service.model(name))
