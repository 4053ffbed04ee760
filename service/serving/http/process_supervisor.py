"""Several serving processes on one port (``processes`` > 1, or 0 for one per core).

Why: one Python process parses HTTP, multipart bodies and JSON on a single event-loop
thread, which saturates long before the cores do (docs/ARCHITECTURE.md has the numbers).
Here the supervisor binds the port once and starts N processes on it. On Linux each process
listens on a socket of its own on that port (``SO_REUSEPORT``), and the kernel spreads new
connections evenly over them by a hash of each connection. On one shared socket whichever
process accepts first takes the connection, and a keep-alive client stays where it landed:
64 wrk clients once split 0/64, which halved throughput (docs/ARCHITECTURE.md).
Elsewhere (macOS does not balance ``SO_REUSEPORT``) the processes share the one socket.

Each process is the ordinary single-process server: its own event loop, feature thread pool,
batchers and workers, with the host's cores divided among the processes
(``Settings.cores_per_process``). Batches form per process and model.

What makes N processes behave as one server:
- readiness: ``/readyz`` answers 200 only once every process has loaded (``ProcessGroup``);
- metrics: Prometheus multiprocess mode, so any process's ``/metrics`` shows the sums;
- reload: an admin reload in one process is passed on to the others (``RELOAD_SIGNAL``);
- SIGTERM/SIGINT: passed to every process, each drains as a single server does; the
  supervisor exits when all have, with the worst exit status;
- a process that dies otherwise is replaced; one that exits with status 3 (the startup
  check: a misconfiguration no restart fixes) stops the group with status 3.
"""

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from service.config import Settings
from service.serving.http.request_logging import configure_logging
from service.serving.http.server import serve
from service.serving.metrics import MULTIPROC_ENV
from service.serving.process_group import RELOAD_REQUEST, RELOAD_SIGNAL, ProcessGroup

log = logging.getLogger(__name__)
STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan startup fails
PR_SET_PDEATHSIG = 1  # linux/prctl.h
RESTART_BACKOFF_S = (0.5, 30.0)  # first and longest wait before replacing a dead process


def run(settings: Settings) -> int:
    """Serve with ``settings.process_count()`` processes; the exit status of the server."""
    if settings.process_count() == 1:
        serve(settings)
        return 0
    return Supervisor(settings).run()


BALANCED_ACCEPT = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: the kernel picks one), sharing the port
    with the other processes' where the kernel balances."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if BALANCED_ACCEPT:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    sock = bind(host, port)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def port_socket(host: str, port: int) -> socket.socket:
    """The supervisor's socket: where the kernel balances, bound but not listening (it holds
    the port, and picks it for port 0, but is handed no connection); else the one listening
    socket every process accepts on."""
    return bind(host, port) if BALANCED_ACCEPT else listen(host, port)


def own_listener(inherited: socket.socket) -> socket.socket:
    """The socket a serving process accepts on: its own on the supervisor's port where the
    kernel balances, else the supervisor's. Its own is only bound here: uvicorn listens on
    it once the app has started and can answer, so no connection queues behind a process
    still importing (models load after that, and /readyz says so)."""
    if not BALANCED_ACCEPT:
        return inherited
    own = bind(*inherited.getsockname()[:2])
    inherited.close()
    return own


def _process_main(settings: Settings, sock: socket.socket, group: ProcessGroup) -> None:
    signal.signal(RELOAD_SIGNAL, signal.SIG_IGN)  # until the app handles it: a reload asked
    _drain_when_orphaned(group.supervisor_pid)  # while this one starts must not kill it
    configure_logging(settings.log_json, settings.log_level)
    serve(settings, sockets=[own_listener(sock)], group=group)


def _drain_when_orphaned(supervisor_pid: int) -> None:
    """If the supervisor dies (SIGKILL, OOM), this process gets SIGTERM and drains, rather
    than serving on alone with nobody to stop it (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor_pid:  # it died before the line above
        raise SystemExit("the supervisor is gone; not serving")


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings, self.size = settings, settings.process_count()
        self._context = multiprocessing.get_context("spawn")  # no fork of a running loop
        self._loaded = self._context.Array("b", self.size, lock=False)
        self._origin = self._context.Value("i", -1, lock=False)
        self._processes: list[BaseProcess] = []
        self._stopping = False
        self._sock: socket.socket | None = None

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="diffres-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the processes it spawns
        sock = self._sock = port_socket(self.settings.host, self.settings.port)
        try:
            log.info("serving on %s:%d with %d processes", *sock.getsockname()[:2], self.size)
            self._processes = [self._spawn(i, sock) for i in range(self.size)]
            self._install_signals()
            return self._watch(sock)
        finally:
            sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _spawn(self, index: int, sock: socket.socket) -> BaseProcess:
        self._loaded[index] = 0
        group = ProcessGroup(index, self._loaded, self._origin, os.getpid())
        process = self._context.Process(target=_process_main, name=f"diffres-serve-{index}",
                                        args=(self.settings, sock, group), daemon=False)
        process.start()
        return process

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(RELOAD_REQUEST, self._pass_reload)

    def _stop(self, sig: int, frame) -> None:
        """Every process drains on its own; a second SIGINT forces them (as uvicorn does)."""
        forced = self._stopping and sig == signal.SIGINT
        self._stopping = True
        if self._sock is not None:  # the processes' listeners (their own, or copies of this
            self._sock.close()  # one) close as they finish draining: then connections are refused
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT if forced else signal.SIGTERM)

    def _pass_reload(self, sig: int, frame) -> None:
        for index, process in enumerate(self._processes):
            if index != self._origin.value and process.is_alive() and process.pid is not None:
                os.kill(process.pid, RELOAD_SIGNAL)

    def _watch(self, sock: socket.socket) -> int:
        """Until every process has exited after a stop: replace the ones that die."""
        backoff = RESTART_BACKOFF_S[0]
        while True:
            alive = [p for p in self._processes if p.exitcode is None]
            if not alive:
                break
            wait([p.sentinel for p in alive], timeout=1.0)
            for index, process in enumerate(self._processes):
                if process.exitcode is None or self._stopping:
                    continue
                self._forget(process)
                if process.exitcode == STARTUP_FAILURE:
                    log.error("serving process %d failed its startup check; stopping", index)
                    self._stop(signal.SIGTERM, None)
                    continue
                log.error("serving process %d (pid %s) exited with status %s; replacing it "
                          "in %.1f s", index, process.pid, process.exitcode, backoff)
                time.sleep(backoff)
                backoff = min(2 * backoff, RESTART_BACKOFF_S[1])
                self._processes[index] = self._spawn(index, sock)
        for process in self._processes:
            self._forget(process)
        codes = [p.exitcode for p in self._processes]
        return STARTUP_FAILURE if STARTUP_FAILURE in codes else next((c for c in codes if c), 0)

    @staticmethod
    def _forget(process: BaseProcess) -> None:
        """Drop a dead process's live gauges from the merged metrics."""
        if process.pid is not None and MULTIPROC_ENV in os.environ:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid)
