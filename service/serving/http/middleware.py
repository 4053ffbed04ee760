"""ASGI middleware at the edge: request id, request metrics, the upload size limit, the
in-flight count and ``Connection: close`` while draining.

The size limit never buffers the body: a declared Content-Length over the limit is refused
before reading anything, and a chunked body is counted as it streams, failing as soon as
it passes the limit.

Every request is counted in ``inflight`` (the repository's grace periods wait on it). While
the server drains, every response carries ``Connection: close``, so no client sends its next
request on a kept-alive connection the server is about to close.
"""

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.serving.http import request_logging as slog
from service.serving.http.error_mapping import render
from service.serving.metrics import Metrics

log = logging.getLogger("service.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Generated ids: 16 random hex digits per process, then a 16-digit counter: unique across
# the processes of a server, and cheaper than a uuid4 per request (~4 % of the event loop).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()
UNTIMED = {"/metrics"}
QUIET = {"/healthz", "/readyz"}  # probes: logged at debug level


class Tracker(Protocol):
    def enter(self) -> int: ...

    def leave(self, token: int) -> None: ...


class _Untracked:
    def enter(self) -> int:
        return 0

    def leave(self, token: int) -> None: ...


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_upload_bytes: int,
                 inflight: Tracker | None = None,
                 draining: Callable[[], bool] = lambda: False) -> None:
        self.app, self.metrics, self.max_bytes = app, metrics, max_upload_bytes
        self.inflight = inflight if inflight is not None else _Untracked()
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _request_id(scope)
        token = slog.request_id.set(rid)
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                extra = [(b"x-request-id", rid.encode())]
                if self.draining():
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        started = time.perf_counter()
        epoch = self.inflight.enter()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_bytes:
                response = render(PayloadTooLarge(
                    f"body is {declared} bytes; the limit is {self.max_bytes}"))
                return await response(scope, receive, send_with_id)
            await self.app(scope, self._limited(receive), send_with_id)
        finally:
            self.inflight.leave(epoch)
            self._observe(scope, status[0], time.perf_counter() - started)
            slog.request_id.reset(token)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"body exceeds the limit of {self.max_bytes} bytes")
            return message

        return counted

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        state = scope.get("state") or {}
        # A route may name its endpoint (v2 infer has two paths, one label); else its path.
        endpoint = (state.get("endpoint") or getattr(scope.get("route"), "path", None)
                    or "unmatched")
        if endpoint in UNTIMED:
            return
        model = state.get("model", "")
        self.metrics.requests.labels(endpoint, model, str(status)).inc()
        self.metrics.request_duration.labels(endpoint, model).observe(seconds)
        level = logging.DEBUG if endpoint in QUIET else logging.INFO
        log.log(level, "%s %s -> %d in %.1f ms", scope["method"], scope["path"], status,
                seconds * 1000)


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _VALID_ID.match(candidate):
                return candidate
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
