"""Run the app under uvicorn with a graceful drain on SIGTERM/SIGINT.

On the first signal the service stops accepting (new inference requests get 503 and
/readyz turns 503), waits up to ``drain_timeout_s`` for in-flight requests, then lets
uvicorn close connections and run the lifespan shutdown (batchers finish queued windows,
workers are released). A second SIGINT forces the exit.
"""

import asyncio
import logging
import signal

import uvicorn

from service.config import Settings
from service.serving.dataplane.inference_service import InferenceService
from service.serving.http.app import create_app

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: InferenceService, drain_s: float):
        super().__init__(config)
        self.service, self.drain_s = service, drain_s
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._draining = True
        log.info("received %s: draining (up to %.0f s)", signal.Signals(sig).name, self.drain_s)
        self.service.begin_drain()
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.drain_s
        while self.service.inflight and loop.time() < give_up:
            await asyncio.sleep(0.05)
        if self.service.inflight:
            log.warning("drain timeout: %d requests still in flight", self.service.inflight)
        self.should_exit = True


def serve(settings: Settings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=settings.drain_timeout_s)
    DrainingServer(config, app.state.service, settings.drain_timeout_s).run()
