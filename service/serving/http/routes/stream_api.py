"""``WS /stream?model=&version=``: keyword spotting on live audio (protocol: docs/API.md,
"Streaming"). The WebSocket plumbing only; the sliding window, decoding and refractory
period are ``dataplane/stream_session.py``, and every window goes through
``InferenceService.classify_stream_window``, the batcher /classify uses.

Two tasks per connection: the receiver decodes chunks into windows and queues them (at most
``stream_buffer_seconds`` of windows: more closes the stream with 4429, memory never grows);
the classifier sends each window to the batcher, in order, and the answers to the client.
Any error ends both (an ``error`` message, then a close code); a client that vanishes ends
them quietly. Nothing outlives the connection.
"""

import asyncio
import contextlib
import logging
import math

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.errors import (
    DiffresError,
    InvalidInput,
    InvalidParameter,
    ModelNotFound,
    NotReady,
    Overloaded,
    Unauthorized,
)
from service.serving.dataplane.stream_session import (
    Detector,
    Geometry,
    StreamSession,
    Window,
    parse_start,
)
from service.serving.http.security import key_matches

log = logging.getLogger(__name__)
router = APIRouter(tags=["streaming"])

START_TIMEOUT_S = 10.0

# Close codes (docs/API.md, "Streaming"). 1000-1013 are RFC 6455's; 4xxx mirror HTTP.
NORMAL, GOING_AWAY, UNSUPPORTED_DATA, TOO_BIG, INTERNAL, TRY_LATER = 1000, 1001, 1003, 1009, \
    1011, 1013
BAD_REQUEST, UNAUTHORIZED, NOT_FOUND, TOO_LONG, TOO_FAST = 4400, 4401, 4404, 4408, 4429


class StreamClosed(Exception):
    """Ends a stream: an ``error`` message ``{code, message}``, then close ``close_code``."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code, self.code, self.message = close_code, code, message


def closing(exc: DiffresError) -> StreamClosed:
    if isinstance(exc, Unauthorized):
        close = UNAUTHORIZED
    elif isinstance(exc, (InvalidParameter, InvalidInput)):
        close = BAD_REQUEST
    elif isinstance(exc, ModelNotFound):
        close = NOT_FOUND
    elif isinstance(exc, (NotReady, Overloaded)):
        close = TRY_LATER
    else:
        close = INTERNAL
    return StreamClosed(close, exc.code, exc.message)


async def send_json(websocket: WebSocket, message: dict) -> None:
    await websocket.send_text(orjson.dumps(message).decode())


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    state = websocket.app.state
    await websocket.accept()
    opened = False
    try:
        service = state.service
        if not service.accepting:
            raise StreamClosed(GOING_AWAY, "shutting_down", "server is shutting down")
        open_streams = getattr(state, "open_streams", 0)
        if open_streams >= state.settings.max_streams:
            raise StreamClosed(TRY_LATER, "overloaded", f"{open_streams} streams open; the "
                               f"limit is {state.settings.max_streams}")
        state.open_streams, opened = open_streams + 1, True
        service.metrics.active_streams.inc()
        await serve_stream(websocket, service, state.settings)
    except StreamClosed as exc:
        await close(websocket, exc)
    except DiffresError as exc:
        await close(websocket, closing(exc))
    except WebSocketDisconnect:
        pass  # the client went away: nothing to answer
    except Exception:
        log.exception("stream failed")
        await close(websocket, StreamClosed(INTERNAL, "internal_error",
                                            "internal error; see the server log"))
    finally:
        if opened:
            state.open_streams -= 1
            service.metrics.active_streams.dec()


async def close(websocket: WebSocket, exc: StreamClosed) -> None:
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):  # the client may be gone already
        await send_json(websocket, {"type": "error", "code": exc.code, "message": exc.message})
        await websocket.close(exc.close_code, exc.message[:120])


def presented(websocket: WebSocket, extra: str | None) -> list[tuple[bytes, bytes]]:
    """The request's headers plus a key from the query (``api_key``) or start message, as an
    X-API-Key header, for ``security.key_matches``."""
    headers = list(websocket.scope.get("headers", []))
    for key in (websocket.query_params.get("api_key"), extra):
        if key:
            headers.append((b"x-api-key", key.encode()))
    return headers


async def receive(websocket: WebSocket) -> dict:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def start_message(websocket: WebSocket) -> object:
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            message = await receive(websocket)
    except TimeoutError:
        raise StreamClosed(BAD_REQUEST, "invalid_parameter", "no start message within "
                           f"{START_TIMEOUT_S:g} s") from None
    if message.get("text") is None:
        raise StreamClosed(UNSUPPORTED_DATA, "invalid_parameter",
                           "the first message must be the JSON start message, not audio")
    try:
        return orjson.loads(message["text"])
    except orjson.JSONDecodeError:
        raise StreamClosed(UNSUPPORTED_DATA, "invalid_parameter",
                           "the start message is not JSON") from None


async def serve_stream(websocket: WebSocket, service, settings) -> None:
    query = websocket.query_params
    version = query.get("version")
    if version is not None and not (version.isdigit() and int(version) > 0):
        raise InvalidParameter(f"version must be a positive integer, got {version!r}")
    model = service.resolve(query.get("model"), None if version is None else int(version))
    start = await start_message(websocket)
    if settings.api_key is not None:
        extra = start.get("api_key") if isinstance(start, dict) else None
        if not isinstance(extra, str) or not extra:
            extra = None
        if not key_matches(presented(websocket, extra), settings.api_key):
            raise Unauthorized("a valid API key is required")
    config = parse_start(start, settings.detection_threshold, settings.stream_refractory_s)
    f = model.manifest.frontend
    geometry = Geometry.of(f.sample_rate, f.hop_length, model.manifest.compressor.in_t_dim,
                           settings.stream_hop_ms / 1000)
    session = StreamSession(config, geometry)
    detector = Detector(model.manifest.labels, config.threshold, config.refractory_s,
                        config.scores)
    hop_s = geometry.hop / geometry.sample_rate
    limit = max(1, math.ceil(settings.stream_buffer_seconds / hop_s - 1e-9))
    await send_json(websocket, {
        "type": "ready", "model": model.name, "version": model.version,
        "labels": model.manifest.labels, "sample_rate": geometry.sample_rate,
        "window_seconds": geometry.window / geometry.sample_rate, "hop_seconds": hop_s,
        "threshold": config.threshold, "refractory_seconds": config.refractory_s,
        "max_buffered_windows": limit, "max_chunk_bytes": settings.max_stream_chunk_bytes,
        "max_stream_seconds": settings.max_stream_seconds})

    metrics = service.metrics
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Window | None] = asyncio.Queue()
    counts = {"pending": 0, "windows": 0, "detections": 0}

    async def receiver() -> None:
        while True:
            message = await receive(websocket)
            chunk = message.get("bytes")
            if chunk is None:
                text = message.get("text") or ""
                try:
                    end = orjson.loads(text) == {"type": "end"}
                except orjson.JSONDecodeError:
                    end = False
                if not end:
                    raise StreamClosed(UNSUPPORTED_DATA, "invalid_parameter", "after the start "
                                       "message: binary audio, or {\"type\": \"end\"}")
                queue.put_nowait(None)
                return
            if not service.accepting:
                raise StreamClosed(GOING_AWAY, "shutting_down", "server is shutting down")
            if len(chunk) > settings.max_stream_chunk_bytes:
                raise StreamClosed(TOO_BIG, "payload_too_large", f"a chunk of {len(chunk)} "
                                   f"bytes; the limit is {settings.max_stream_chunk_bytes}")
            before = session.seconds
            windows = session.feed(chunk, loop.time())
            metrics.stream_audio_seconds.labels(model.name).inc(session.seconds - before)
            if session.seconds > settings.max_stream_seconds:
                raise StreamClosed(TOO_LONG, "stream_too_long", f"the stream passed "
                                   f"{settings.max_stream_seconds:g} s of audio")
            if counts["pending"] + len(windows) > limit:
                raise StreamClosed(TOO_FAST, "too_fast", f"more than {limit} windows "
                                   f"({settings.stream_buffer_seconds:g} s of audio) waiting "
                                   "for the model: send at most in real time")
            for window in windows:
                counts["pending"] += 1
                queue.put_nowait(window)

    async def classifier() -> None:
        while (window := await queue.get()) is not None:
            probs = await service.classify_stream_window(model, window.samples)
            for message in detector.update(window, probs):
                await send_json(websocket, message)
                if message["type"] == "detection":
                    counts["detections"] += 1
                    metrics.stream_detection_latency.labels(model.name).observe(
                        loop.time() - window.arrival)
            counts["pending"] -= 1
            counts["windows"] += 1

    tasks = [asyncio.create_task(receiver(), name="stream-receive"),
             asyncio.create_task(classifier(), name="stream-classify")]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done and tasks[0].exception() is None:
            await tasks[1]  # the client said end: classify what is queued
        else:
            for task in done:
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await send_json(websocket, {"type": "end", "seconds": session.seconds,
                                "windows": counts["windows"],
                                "detections": counts["detections"]})
    await websocket.close(NORMAL)
