"""``create_app(settings)``: assembles routers, middleware, error mapping and the lifespan
that loads (and at shutdown drains and releases) the models. Nothing else lives here.

The lifespan's startup fails (uvicorn exits with status 3) when ``default_model`` is not in
the store; see ``ModelRepository.check_default_model``."""

import asyncio
import contextlib
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.config import Settings, get_settings
from service.serving.dataplane.inference_service import build_service
from service.serving.http import error_mapping, security
from service.serving.http.middleware import EdgeMiddleware
from service.serving.http.routes import (
    admin_api,
    health_api,
    inference_api,
    models_api,
    stream_api,
    v2_api,
    visualize_api,
    web_ui,
)
from service.serving.process_group import RELOAD_SIGNAL, ProcessGroup

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, group: ProcessGroup | None = None) -> FastAPI:
    """``group``: this process's siblings when several serve one port (see
    ``process_supervisor``); their reloads reach this one as ``RELOAD_SIGNAL``."""
    settings = settings or get_settings()
    service = build_service(settings, group)
    metrics = service.metrics

    async def load() -> None:
        await service.start()
        if settings.gc_freeze:  # see its description in Settings; PERFORMANCE.md measures it
            gc.collect()
            gc.freeze()

    async def reload_from_peer() -> None:
        try:
            await service.reload(from_peer=True)
        except Exception:
            log.exception("reload asked by a sibling process failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("settings: %s", settings.masked())
        service.check_startup()  # fails the startup: see model_repository.py
        loader = asyncio.create_task(load(), name="load-models")
        app.state.loader = loader
        if group is not None:
            asyncio.get_running_loop().add_signal_handler(
                RELOAD_SIGNAL, lambda: asyncio.ensure_future(reload_from_peer()))
        try:
            yield
        finally:
            service.begin_drain()
            if not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            await service.stop()
            log.info("stopped")

    # /docs and /redoc from bundled assets, not a CDN: they render on air-gapped hosts too.
    app: FastAPI = FastAPIOffline(title="diffres-serve", version="1.0",
                  description="DiffRes audio classifiers behind a dynamic batcher. "
                  "See docs/API.md for inputs, outputs, errors and metrics.",
                  lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.service = settings, metrics, service

    for router in (inference_api.router, models_api.router, health_api.router, v2_api.router):
        app.include_router(router)
    app.include_router(stream_api.router)  # WS /stream
    app.include_router(visualize_api.router)  # POST /visualize
    web_ui.install(app)  # the page at / and /static (public: see security.PUBLIC_PATHS)
    if settings.admin_key is not None:  # else every /admin path is 404
        app.include_router(admin_api.router)
    error_mapping.install(app)
    security.install(app, settings)  # inside the edge middleware: added before it
    app.add_middleware(EdgeMiddleware, metrics=metrics, max_upload_bytes=settings.max_upload_bytes,
                       inflight=service.requests, draining=lambda: not service.accepting)
    return app
