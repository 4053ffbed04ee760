"""Who may call what: API key and admin key checks, and CORS. Both are off by default.

* ``api_key`` set: every path needs it (``Authorization: Bearer <key>`` or ``X-API-Key:
  <key>``), except the ops paths ``/healthz``, ``/readyz`` and ``/metrics`` unless
  ``protect_ops``. Unknown paths need it too, so a caller without the key learns nothing
  about which paths exist.
  The web page (``/`` and ``/static/...``) is public too: it holds no data, and the
  API calls it makes send the key the user typed in.
* ``admin_key`` set: ``/admin/...`` exists (else 404) and needs that key (the API key does
  not open it).
* A refused request gets 401 ``unauthorized`` with ``WWW-Authenticate``, the same answer
  for a missing and a wrong key, before its body is read (under ``/v2`` in the Open Inference
  Protocol's shape, ``{"error": "..."}``).
* Keys are compared as sha256 digests with ``hmac.compare_digest``: constant time, and the
  key's length does not show either.
* ``cors_origins`` set: Starlette's CORS middleware answers preflights and marks responses
  for those origins only; nothing is allowed with credentials (cookies).
"""

import hashlib
import hmac

from fastapi import FastAPI, Request
from pydantic import SecretStr
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings
from service.errors import Unauthorized
from service.serving.http.error_mapping import render
from service.serving.http.responses import OrjsonResponse

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# The web page (http/routes/web_ui.py) and its files load without a key; its API calls send it.
PUBLIC_PATHS = frozenset({"/"})
PUBLIC_PREFIX = "/static/"
ADMIN_PREFIX = "admin"
_DENIED = "a valid API key is required"


def is_admin_path(path: str) -> bool:
    return path.lstrip("/").split("/", 1)[0] == ADMIN_PREFIX


def denied(path: str) -> OrjsonResponse:
    """The 401, in the error shape of the protocol that ``path`` belongs to."""
    response = render(Unauthorized(_DENIED))
    if path.lstrip("/").split("/", 1)[0] == "v2":
        return OrjsonResponse({"error": _DENIED}, status_code=401, headers={
            "WWW-Authenticate": response.headers["www-authenticate"]})
    return response


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request presents: ``Authorization: Bearer <key>`` and ``X-API-Key``."""
    keys = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                keys.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            keys.append(value.strip())
    return keys


def key_matches(headers: list[tuple[bytes, bytes]], key: SecretStr) -> bool:
    expected = _digest(key.get_secret_value())
    matched = False
    for candidate in presented_keys(headers):  # no early exit: every candidate is compared
        matched |= hmac.compare_digest(_digest(candidate), expected)
    return matched


class AuthMiddleware:
    """Refuses, before routing and before reading the body, a request without the key its
    path needs."""

    def __init__(self, app: ASGIApp, api_key: SecretStr | None, admin_key: SecretStr | None,
                 protect_ops: bool) -> None:
        self.app, self.api_key, self.admin_key = app, api_key, admin_key
        self.protect_ops = protect_ops

    def required_key(self, path: str) -> SecretStr | None:
        if self.admin_key is not None and is_admin_path(path):
            return self.admin_key
        if path in OPS_PATHS and not self.protect_ops:
            return None
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX):
            return None
        return self.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            key = self.required_key(scope["path"])
            if key is not None and not key_matches(scope.get("headers", []), key):
                return await denied(scope["path"])(scope, receive, send)
        await self.app(scope, receive, send)


async def require_admin(request: Request) -> None:
    """Router dependency of /admin: the middleware already checked; checked again here so
    the admin routes never depend on middleware order."""
    key = request.app.state.settings.admin_key
    if key is None or not key_matches(request.scope.get("headers", []), key):
        raise Unauthorized(_DENIED)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the key checks and (when configured) CORS. Call before the edge middleware is
    added, so the edge stays outermost (request id, metrics and size limit for all)."""
    app.add_middleware(AuthMiddleware, api_key=settings.api_key, admin_key=settings.admin_key,
                       protect_ops=settings.protect_ops)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_credentials=False,
                           allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                          "Accept", "X-Request-ID",
                                          "Inference-Header-Content-Length"],
                           expose_headers=["X-Request-ID", "Retry-After", "X-Model",
                                           "X-Model-Version", "WWW-Authenticate"],
                           max_age=600)
