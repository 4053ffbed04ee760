"""Open Inference Protocol (KServe v2 / Triton HTTP) endpoints under /v2: health, server and
model metadata, model readiness, and inference (JSON tensors or binary tensor data).

Routes parse and answer: ``InferenceService.infer_v2`` decodes the body with the codec
(``dataplane.v2_codec``), runs the tensors through the same batcher, limits and metrics as
/classify, and encodes the answer. Errors of these routes are the protocol's
``{"error": "..."}`` (``error_mapping.render_v2``). See docs/KSERVE_V2.md.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.serving.dataplane import v2_codec
from service.serving.dataplane.inference_service import InferenceService
from service.serving.http.error_mapping import render_v2
from service.serving.http.responses import OrjsonResponse
from service.serving.http.routes.dependencies import Service, until_disconnect

ENDPOINT = "v2_infer"  # metrics label of both infer paths (request.state.endpoint)
JSON, OCTETS = "application/json", "application/octet-stream"


class V2Route(APIRoute):
    """A route whose errors are rendered in the protocol's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error, expected or not, in the protocol's shape
                return render_v2(exc)

        return handle


router = APIRouter(prefix="/v2", tags=["kserve-v2"], route_class=V2Route)

INFER_BODY = {"requestBody": {"required": True, "content": {
    JSON: {"example": {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": {"sample_rate": 16000},
                                   "data": [0.0, 0.1, 0.0, -0.1]}],
                       "outputs": [{"name": "probabilities"}]}},
    OCTETS: {"schema": {"type": "string", "format": "binary", "description":
                        "binary tensor data: a JSON header of Inference-Header-Content-Length "
                        "bytes, then the inputs' raw little-endian data"}}}}}


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> OrjsonResponse:
    return OrjsonResponse(v2_codec.server_metadata(request.app.title, request.app.version))


@router.get("/health/live", summary="Server liveness")
async def live() -> OrjsonResponse:
    return OrjsonResponse({"live": True})


@router.get("/health/ready", summary="Server readiness (every model version loaded)")
async def ready(service: Service) -> OrjsonResponse:
    service.check_ready()
    return OrjsonResponse({"ready": True})


@router.get("/models/{name}", summary="Model metadata (latest ready version)")
async def model_metadata(name: str, service: Service) -> OrjsonResponse:
    return OrjsonResponse(service.v2_metadata(name, None))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
async def model_version_metadata(name: str, version: str, service: Service) -> OrjsonResponse:
    return OrjsonResponse(service.v2_metadata(name, version))


@router.get("/models/{name}/ready", summary="Model readiness (latest ready version)")
async def model_ready(name: str, service: Service) -> OrjsonResponse:
    return OrjsonResponse(service.v2_ready(name, None))


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def model_version_ready(name: str, version: str, service: Service) -> OrjsonResponse:
    return OrjsonResponse(service.v2_ready(name, version))


@router.post("/models/{name}/infer", openapi_extra=INFER_BODY, summary="Inference")
async def infer(request: Request, name: str, service: Service) -> Response:
    return await _infer(request, service, name, None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY,
             summary="Inference on a model version")
async def infer_version(request: Request, name: str, version: str,
                        service: Service) -> Response:
    return await _infer(request, service, name, version)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
async def unknown(request: Request, path: str) -> Response:
    return Response(v2_codec.error_body(f"{request.method} /v2/{path} is not an endpoint of this "
                                  "server (health, metadata, ready, infer)"), 404,
                    media_type=JSON)


async def _infer(request: Request, service: InferenceService, name: str,
                 version: str | None) -> Response:
    request.state.model = service.model_label(name)
    request.state.endpoint = ENDPOINT
    with service.admitted():
        body = await request.body()
        content, header_length = await until_disconnect(
            request, service.infer_v2(name, version, body, request.headers))
    if header_length is None:
        return Response(content, media_type=JSON)
    return Response(content, media_type=OCTETS,
                    headers={v2_codec.HEADER_LENGTH: str(header_length)})
