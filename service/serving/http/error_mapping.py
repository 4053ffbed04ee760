"""The one place where errors become HTTP: a status table and two JSON shapes, ours
``{"error": {"code": ..., "message": ...}}`` (``render``) and the Open Inference Protocol's
``{"error": message}`` under /v2 (``render_v2``). Bad input never yields a 500."""

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.errors import (
    AudioTooShort,
    ClientDisconnected,
    ConfigError,
    DeadlineExceeded,
    DiffresError,
    InferenceFailed,
    InvalidInput,
    InvalidParameter,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    TruncatedAudio,
    Unauthorized,
    UnsupportedMedia,
)
from service.serving.dataplane.v2_codec import error_body
from service.serving.http.responses import OrjsonResponse

log = logging.getLogger(__name__)

STATUS: dict[type[DiffresError], int] = {
    InvalidParameter: 400,
    Unauthorized: 401,
    ModelNotFound: 404,
    PayloadTooLarge: 413,
    UnsupportedMedia: 415,
    InvalidInput: 422,
    AudioTooShort: 422,
    TruncatedAudio: 422,
    ClientDisconnected: 499,  # nginx's "client closed request"; nobody reads it
    InferenceFailed: 500,
    ConfigError: 500,  # a startup failure; listed so every domain error has a status
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
    DiffresError: 500,
}
HTTP_CODES = {400: "invalid_parameter", 401: "unauthorized", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media"}


def status_of(exc: DiffresError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> OrjsonResponse:
    return OrjsonResponse({"error": {"code": code, "message": message}}, status_code=status,
                          headers=headers)


def render(exc: DiffresError) -> OrjsonResponse:
    status = status_of(exc)
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    elif isinstance(exc, NotReady):
        headers = {"Retry-After": "5"}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="diffres-serve"'}
    if status >= 500 and not isinstance(exc, (NotReady, Overloaded, DeadlineExceeded)):
        log.error("%s: %s", exc.code, exc.message)
    return error_response(status, exc.code, exc.message, headers)


# The protocol answers bad tensor values (InvalidInput, 422 in our table) with 400.
V2_STATUS = {422: 400}


def render_v2(exc: Exception) -> Response:
    """Any error of a /v2 route in the protocol's shape; status, Retry-After and logging as
    ``render``, unexpected exceptions as a logged 500."""
    if isinstance(exc, RequestValidationError):
        exc = InvalidParameter(_problems(exc))
    elif not isinstance(exc, DiffresError):
        log.error("unhandled error", exc_info=exc)
        return Response(error_body("internal error; see the server log"), 500,
                        media_type="application/json")
    shared = render(exc)
    status = V2_STATUS.get(shared.status_code, shared.status_code)
    headers = {"Retry-After": shared.headers["retry-after"]} if (
        "retry-after" in shared.headers) else None
    return Response(error_body(exc.message), status, headers=headers,
                    media_type="application/json")


def _problems(exc: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


async def _domain(request: Request, exc: DiffresError) -> OrjsonResponse:
    return render(exc)


async def _validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
    return error_response(400, "invalid_parameter", _problems(exc))


async def _http(request: Request, exc: HTTPException) -> OrjsonResponse:
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal error; see the server log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DiffresError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
