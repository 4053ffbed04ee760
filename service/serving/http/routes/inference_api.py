"""POST /classify and POST /compress. Routes parse and answer; the data plane does the rest."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from service.serving.dataplane.results import NPZ
from service.serving.http.openapi_docs import BODY, CLASSIFY_RESPONSES, COMPRESS_RESPONSES
from service.serving.http.responses import OrjsonResponse
from service.serving.http.routes.dependencies import Service, read_payload, until_disconnect

router = APIRouter(tags=["inference"])
ModelQ = Annotated[str | None, Query(description="model name; default: the default model")]
VersionQ = Annotated[int | None, Query(ge=1, description="model version; default: latest")]
TopKQ = Annotated[int, Query(ge=1, le=1000, description="labels in `top`")]


@router.post("/classify", openapi_extra=BODY, responses=CLASSIFY_RESPONSES,
             response_class=OrjsonResponse, summary="Classify audio or a spectrogram")
async def classify(request: Request, service: Service, model: ModelQ = None,
                   version: VersionQ = None, top_k: TopKQ = 5) -> Response:
    """Overlapping windows of the model's ``window_frames`` frames (a window every
    ``window_hop_fraction`` of a window; the last one padded with silence). Clip
    probabilities: per keyword its max over windows, the background classes their least
    background window, renormalised; ``detections``: keyword windows over
    ``detection_threshold``, merged per label."""
    request.state.model = service.model_label(model)
    with service.admitted():
        payload = await read_payload(request)
        result = await until_disconnect(request, service.classify(model, version, payload, top_k))
    return OrjsonResponse(result)


@router.post("/compress", openapi_extra=BODY, responses=COMPRESS_RESPONSES,
             response_class=OrjsonResponse, summary="DiffRes compressed feature maps")
async def compress(request: Request, service: Service, model: ModelQ = None,
                   version: VersionQ = None) -> Response:
    """avgpool, maxpool and resolution_enc per window, as JSON or (``Accept:
    application/x-npz``) as an .npz archive."""
    request.state.model = service.model_label(model)
    with service.admitted():
        payload = await read_payload(request)
        result = await until_disconnect(request, service.compress(model, version, payload))
        if NPZ in request.headers.get("accept", ""):
            body = await service.compress_npz(result)
            return Response(body, media_type=NPZ, headers={
                "X-Model": result["model"], "X-Model-Version": str(result["version"])})
    return OrjsonResponse(result)
