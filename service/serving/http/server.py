"""Run the app under uvicorn with a graceful drain on SIGTERM/SIGINT.

On the first signal the service stops accepting (new inference requests get 503
``shutting_down`` and /readyz turns 503) but keeps listening and answering for
``drain_grace_s``, every answer with ``Connection: close``; then it waits up to
``drain_timeout_s`` for in-flight requests, then lets uvicorn close the listener and the
connections (which by then have answered) and run the lifespan shutdown (batchers finish
queued windows, workers are released). A second SIGINT forces the exit.
"""

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from service.config import Settings
from service.serving.dataplane.inference_service import InferenceService
from service.serving.http.app import create_app
from service.serving.process_group import ProcessGroup

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn Server whose first SIGTERM/SIGINT starts a drain instead of an exit.

    uvicorn, once ``should_exit`` is set, closes the listener and every idle keep-alive
    connection at once: a request a pooled client is sending on one of them is lost (no
    answer at all). So ``should_exit`` waits: ``grace_s`` of answering while load balancers
    see /readyz fail (each answer ends its connection, so no pooled connection is left
    idle), then up to ``drain_s`` for the requests still in flight.
    """

    def __init__(self, config: uvicorn.Config, service: InferenceService, grace_s: float,
                 drain_s: float) -> None:
        super().__init__(config)
        self.service, self.grace_s, self.drain_s = service, grace_s, drain_s
        self._draining = False
        self._drain_task: asyncio.Task | None = None  # held: the loop keeps weak references

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            if sig == signal.SIGINT:
                log.warning("second SIGINT: exiting without waiting")
                self.force_exit = self.should_exit = True
            return
        self._draining = True
        log.info("received %s: draining (%.1f s grace, then up to %.0f s for in-flight "
                 "requests)", signal.Signals(sig).name, self.grace_s, self.drain_s)
        self.service.begin_drain()
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain, loop)

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain_task = loop.create_task(self._drain(), name="drain")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.grace_s)  # the listener stays open: new connections answered
        give_up = loop.time() + self.drain_s
        while self.service.inflight and loop.time() < give_up:
            await asyncio.sleep(0.05)
        if self.service.inflight:
            log.warning("drain timeout: %d requests still in flight", self.service.inflight)
        # uvicorn's own wait for open connections ends at the same deadline, not drain_s later.
        self.config.timeout_graceful_shutdown = max(give_up - loop.time(), 0.1)
        self.should_exit = True


def serve(settings: Settings, sockets: list[socket.socket] | None = None,
          group: ProcessGroup | None = None) -> None:
    """One serving process: on ``settings.host``/``port``, or on the inherited ``sockets``
    of a process group (``process_supervisor``)."""
    app = create_app(settings, group)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=settings.drain_timeout_s)
    DrainingServer(config, app.state.service, grace_s=settings.drain_grace_s,
                   drain_s=settings.drain_timeout_s).run(sockets=sockets)
