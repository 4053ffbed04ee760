"""The one place where errors become HTTP: a status table and one JSON shape,
``{"error": {"code": ..., "message": ...}}``. Bad input never yields a 500."""

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

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
from service.serving.responses import OrjsonResponse

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


async def _domain(request: Request, exc: DiffresError) -> OrjsonResponse:
    return render(exc)


async def _validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(400, "invalid_parameter", problems)


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
