"""``create_app(settings)``: assembles routers, middleware, error mapping and the lifespan
that loads (and at shutdown drains and releases) the models. Nothing else lives here.

The lifespan's startup fails (uvicorn exits with status 3) when ``default_model`` is not in
the store; see ``ModelRepository.check_default_model``."""

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.config import Settings, get_settings
from service.serving import http_errors, security
from service.serving.inference import InferenceService
from service.serving.metrics import Metrics
from service.serving.middleware import EdgeMiddleware
from service.serving.repository import ModelRepository
from service.serving.routes import admin, health, inference, models, v2

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    repository = ModelRepository(settings, metrics)
    service = InferenceService(settings, repository, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("settings: %s", settings.masked())
        repository.check_default_model()  # fails the startup: see repository.py
        loader = asyncio.create_task(repository.start(), name="load-models")
        app.state.loader = loader
        try:
            yield
        finally:
            service.begin_drain()
            if not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            await repository.stop()
            service.close()
            log.info("stopped")

    # /docs and /redoc from bundled assets, not a CDN: they render on air-gapped hosts too.
    app: FastAPI = FastAPIOffline(title="diffres-serve", version="1.0",
                  description="DiffRes audio classifiers behind a dynamic batcher. "
                  "See docs/API.md for inputs, outputs, errors and metrics.",
                  lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.service = settings, metrics, service

    for router in (inference.router, models.router, health.router, v2.router):
        app.include_router(router)
    if settings.admin_key is not None:  # else every /admin path is 404
        app.include_router(admin.router)
    http_errors.install(app)
    security.install(app, settings)  # inside the edge middleware: added before it
    app.add_middleware(EdgeMiddleware, metrics=metrics, max_upload_bytes=settings.max_upload_bytes,
                       inflight=repository.inflight, draining=lambda: not service.accepting)
    return app
