"""POST /visualize: the same inputs as /classify, answered with a PNG (``result_plots``)."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.serving.http.openapi_docs import BODY, VISUALIZE_RESPONSES
from service.serving.http.routes.dependencies import Service, read_payload, until_disconnect
from service.serving.http.routes.inference_api import ModelQ, TopKQ, VersionQ

router = APIRouter(tags=["inference"])
PNG = "image/png"


@router.post("/visualize", openapi_extra=BODY, responses=VISUALIZE_RESPONSES,
             response_class=Response, summary="Plot log-mel, frame scores, compression, classes")
async def visualize(request: Request, service: Service, model: ModelQ = None,
                    version: VersionQ = None, top_k: TopKQ = 5) -> Response:
    """Four panels: the log-mel spectrogram; the DiffRes importance score of every input
    frame; the compressed map on its learnt time axis (each output step drawn over the
    input frames it merged; uniform spans for a fixed-resolution model); the top classes as
    bars, or the detections over time when the input is longer than one model window.
    Errors as /classify's, in JSON."""
    request.state.model = service.model_label(model)
    with service.admitted():
        payload = await read_payload(request)
        png = await until_disconnect(request, service.visualize(model, version, payload, top_k))
    return Response(png, media_type=PNG)
