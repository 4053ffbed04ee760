"""Shared route plumbing: dependencies, reading the body into a ``Payload``, and cancelling
the work of a client that disconnects."""

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from service.errors import ClientDisconnected, UnsupportedMedia
from service.serving.dataplane.inference_service import InferenceService, Payload

T = TypeVar("T")
NPY_TYPES = {"application/x-npy", "application/npy"}
AUDIO_TYPES = {"application/octet-stream", "application/ogg"}


# Dependencies are ``async def``: FastAPI runs a plain ``def`` one in a thread pool, a
# thread hop per request that cost a quarter of the event loop's time under load.
# The app's own objects come from app.state, not dependency_overrides: with any override set,
# FastAPI re-inspects every dependency's signature on every request (~5 % of the event loop).
async def get_service(request: Request) -> InferenceService:
    return request.app.state.service


Service = Annotated[InferenceService, Depends(get_service)]


async def read_payload(request: Request) -> Payload:
    """Body -> Payload by content type: multipart ``file``, ``audio/*``, JSON or .npy."""
    header = request.headers.get("content-type", "")
    ctype = header.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":  # parsed on the thread pool (dataplane.form_upload)
        return Payload("multipart", await request.body(), header)
    if ctype.startswith("audio/") or ctype in AUDIO_TYPES:
        kind = "audio"
    elif ctype == "application/json":
        kind = "json"
    elif ctype in NPY_TYPES:
        kind = "npy"
    else:
        raise UnsupportedMedia(f"unsupported content type {ctype or '(none)'!r}; send "
                               "multipart/form-data (file), audio/*, application/json or "
                               "application/x-npy")
    return Payload(kind, await request.body())


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (its queued windows are
    dropped by the batcher) and raise ``ClientDisconnected``. Call after the body is read."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnected("client disconnected; request dropped") from None
        raise
    finally:
        watcher.cancel()
