"""GET /models and GET /models/{name}: versions, labels, input spec, backend, load state."""

from fastapi import APIRouter

from service.errors import ModelNotFound
from service.serving.responses import OrjsonResponse
from service.serving.routes.deps import Service, SettingsDep

router = APIRouter(tags=["models"])


@router.get("/models", response_class=OrjsonResponse, summary="Every model version")
async def list_models(service: Service, settings: SettingsDep) -> OrjsonResponse:
    return OrjsonResponse({"default_model": settings.default_model,
                           "models": service.repository.describe()})


@router.get("/models/{name}", response_class=OrjsonResponse, summary="One model's versions")
async def get_model(name: str, service: Service) -> OrjsonResponse:
    versions = [m for m in service.repository.describe() if m["name"] == name]
    if not versions:
        raise ModelNotFound(f"unknown model {name!r}")
    ready = [m["version"] for m in versions if m["state"] == "ready"]
    return OrjsonResponse({"name": name, "latest": max(ready) if ready else None,
                           "versions": versions})
