"""Open Inference Protocol (KServe v2 / Triton HTTP) endpoints under /v2: health, server and
model metadata, model readiness, and inference (JSON tensors or binary tensor data).

Routes parse and answer: the codec (``service.serving.v2``) turns bodies into arrays and
back; the data plane runs them through the same batcher, limits and metrics as /classify.
Errors of these routes are the protocol's ``{"error": "..."}``, with the status of the one
shared table (``http_errors``) except that bad tensor values (``InvalidInput``, 422 there)
are a protocol 400. See docs/KSERVE_V2.md.
"""

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.errors import DiffresError, InvalidParameter, NotReady
from service.serving import http_errors, v2
from service.serving.inference import InferenceService
from service.serving.repository import READY, ServedModel
from service.serving.responses import OrjsonResponse
from service.serving.routes.deps import Service, until_disconnect

log = logging.getLogger(__name__)
ENDPOINT = "v2_infer"  # metrics label of both infer paths (request.state.endpoint)
PROTOCOL_STATUS = {422: 400}  # shared-table status -> the protocol's, where they differ
JSON, OCTETS = "application/json", "application/octet-stream"


def error_response(exc: DiffresError) -> Response:
    """``{"error": message}``; status, Retry-After and error logging from the shared edge."""
    shared = http_errors.render(exc)
    status = PROTOCOL_STATUS.get(shared.status_code, shared.status_code)
    headers = {"Retry-After": shared.headers["retry-after"]} if (
        "retry-after" in shared.headers) else None
    return Response(v2.error_body(exc.message), status, headers=headers, media_type=JSON)


class V2Route(APIRoute):
    """A route whose errors are rendered in the protocol's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except DiffresError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                     for e in exc.errors())
                return error_response(InvalidParameter(problems))
            except Exception:
                log.exception("unhandled error in %s", request.url.path)
                return Response(v2.error_body("internal error; see the server log"), 500,
                                media_type=JSON)

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
    return OrjsonResponse(v2.server_metadata(request.app.title, request.app.version))


@router.get("/health/live", summary="Server liveness")
async def live() -> OrjsonResponse:
    return OrjsonResponse({"live": True})


@router.get("/health/ready", summary="Server readiness (every model version loaded)")
async def ready(service: Service) -> OrjsonResponse:
    if not service.accepting:
        raise NotReady("server is shutting down", code="shutting_down")
    if not service.repository.ready:
        raise NotReady("not ready: a model version is loading or failed to load; see "
                       "GET /models")
    return OrjsonResponse({"ready": True})


@router.get("/models/{name}", summary="Model metadata (latest ready version)")
async def model_metadata(name: str, service: Service) -> OrjsonResponse:
    return _metadata(service, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
async def model_version_metadata(name: str, version: str, service: Service) -> OrjsonResponse:
    return _metadata(service, name, version)


@router.get("/models/{name}/ready", summary="Model readiness (latest ready version)")
async def model_ready(name: str, service: Service) -> OrjsonResponse:
    return _ready(service, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def model_version_ready(name: str, version: str, service: Service) -> OrjsonResponse:
    return _ready(service, name, version)


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
    return Response(v2.error_body(f"{request.method} /v2/{path} is not an endpoint of this "
                                  "server (health, metadata, ready, infer)"), 404,
                    media_type=JSON)


def _resolve(service: InferenceService, name: str, version: str | None) -> ServedModel:
    if version is not None and not (version.isdigit() and int(version) > 0):
        raise InvalidParameter(f"model version must be a positive integer, got {version!r}")
    return service.resolve(name, None if version is None else int(version))


def _metadata(service: InferenceService, name: str, version: str | None) -> OrjsonResponse:
    model = _resolve(service, name, version)
    versions = [m["version"] for m in service.repository.describe()
                if m["name"] == name and m["state"] == READY]
    return OrjsonResponse(v2.model_metadata(model.manifest, model.backend, versions))


def _ready(service: InferenceService, name: str, version: str | None) -> OrjsonResponse:
    model = _resolve(service, name, version)  # 404 unknown; 503 loading or failed
    if not service.accepting:
        raise NotReady("server is shutting down", code="shutting_down")
    return OrjsonResponse({"name": model.name, "version": str(model.version), "ready": True})


async def _infer(request: Request, service: InferenceService, name: str,
                 version: str | None) -> Response:
    request.state.model = service.model_label(name)
    request.state.endpoint = ENDPOINT
    model = _resolve(service, name, version)
    with service.admitted():
        body = await request.body()
        parsed = await service.offload(v2.decode_request, body,
                                       request.headers.get(v2.HEADER_LENGTH),
                                       request.headers.get("content-encoding"),
                                       service.settings.max_upload_bytes)
        plan = v2.plan(parsed, model.manifest)
        if plan.kind == v2.SPECTROGRAM:
            work = service.infer_windows(model, plan.array)
        else:
            work = service.classify_waveforms(model, plan.array, plan.sample_rate)
        arrays = await until_disconnect(request, work)
        content, header_length = await service.offload(
            v2.encode_response, model.name, model.version, parsed.id, plan.outputs, arrays,
            model.manifest.labels)
    if header_length is None:
        return Response(content, media_type=JSON)
    return Response(content, media_type=OCTETS,
                    headers={"Inference-Header-Content-Length": str(header_length)})
