"""Workers: each owns one backend instance (its own session/module) and one thread, and
runs whole batches. Which workers exist is a pure plan: (devices x instances) -> specs.

A worker can be replaced: after a failed batch the batcher calls ``recover``; a worker whose
batch hung, or whose probe (its smallest warm-up batch) fails, gets a fresh backend on a
fresh thread. A hung thread cannot be killed in-process: it is abandoned (a daemon, so it
never holds up the exit), and the log says so; repeated hangs call for a process restart.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from service.serving.runtime.backend import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    device: str
    instance: int
    threads: int  # intra-op threads of this worker's backend

    @property
    def label(self) -> str:
        return f"{self.device}#{self.instance}"


def resolve_devices(requested: list[str], gpu_count: int) -> list[str]:
    """``auto`` (or nothing) means every visible GPU, else the CPU."""
    if not requested or requested == ["auto"]:
        return [f"cuda:{i}" for i in range(gpu_count)] or ["cpu"]
    return list(requested)


def plan_workers(devices: list[str], instances_per_device: int, cpu_cores: int,
                 models: int = 1, intra_op_threads: int = 0) -> list[WorkerSpec]:
    """Workers of one model version. CPU workers of all ``models`` share ``cpu_cores`` less
    one, which is left to the event loop, decoding and the front end (on 2 cores that lifts
    served throughput by ~1.5x: benchmarks/serving.py): each gets
    (cores - 1) // (CPU workers in the process) intra-op threads, at least 1, unless
    ``intra_op_threads`` fixes it. GPU workers get 1 CPU thread."""
    cpu_workers = sum(d == "cpu" for d in devices) * instances_per_device * max(models, 1)
    threads = intra_op_threads or max(1, (cpu_cores - 1) // max(cpu_workers, 1))
    return [WorkerSpec(device, i, threads if device == "cpu" else 1)
            for device in devices for i in range(instances_per_device)]


class _Thread:
    """One daemon thread running submitted calls in order."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def submit(self, fn: Callable, *args) -> Future:
        if self._closed:
            raise RuntimeError("worker thread closed")
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def close(self) -> None:
        self._closed = True
        self._calls.put(None)

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)


class Worker:
    """One backend on one device with one thread. ``start()`` loads and warms up; ``run()``
    executes a batch off the event loop; ``recover()`` replaces a broken backend; ``stop()``
    releases it."""

    def __init__(self, spec: WorkerSpec, backend_factory: Callable[[WorkerSpec], Backend],
                 probe_timeout_s: float = 10.0):
        self.spec, self.probe_timeout_s = spec, probe_timeout_s
        self._factory = backend_factory
        self.backend = backend_factory(spec)
        self._thread: _Thread | None = None
        self._warmup: list[np.ndarray] = []

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def start(self, warmup_batches: list[np.ndarray]) -> None:
        self._warmup = warmup_batches
        self._thread = _Thread(f"worker-{self.spec.label}")
        started = time.perf_counter()
        await self._call(self.backend.load, self.spec.device)
        for batch in warmup_batches:
            await self.run(batch)
        log.info("worker %s (%s) loaded and warm in %.2f s", self.spec.label,
                 self.backend.name, time.perf_counter() - started)

    async def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return await self._call(self.backend.run, batch)

    async def _call(self, fn: Callable, *args):
        if self._thread is None:
            raise RuntimeError("worker not started")
        return await asyncio.wrap_future(self._thread.submit(fn, *args))

    async def recover(self, hung: bool) -> bool:
        """After a failed batch: keep a worker that passes a probe; replace one that hung or
        fails it, retrying with backoff until a fresh backend loads. True if replaced."""
        if not hung and await self._probe():
            return False
        delay = 0.5
        while True:
            log.error("worker %s %s; replacing it with a fresh backend", self.spec.label,
                      "hung (its thread is abandoned)" if hung else "failed its probe")
            self._abandon(release=not hung)
            try:
                self.backend = self._factory(self.spec)
                await self.start(self._warmup)
                return True
            except Exception:
                log.exception("replacing worker %s failed; retrying in %.1f s",
                              self.spec.label, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 30.0)

    async def _probe(self) -> bool:
        probe = self._warmup[0] if self._warmup else None
        if probe is None:
            return True
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                outputs = await self.run(probe)
            return all(out.shape[:1] == probe.shape[:1] for out in outputs.values())
        except Exception:
            log.exception("worker %s failed its probe", self.spec.label)
            return False

    def _abandon(self, release: bool) -> None:
        """Retire the thread (after releasing the backend on it, if ``release``)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            if release:
                thread.submit(self.backend.close)
            thread.close()

    async def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._call(self.backend.close)
        except TimeoutError:
            log.warning("worker %s did not release its backend within %.0f s; abandoned",
                        self.spec.label, timeout)
        finally:
            self._abandon(release=False)
