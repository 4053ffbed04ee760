"""Dynamic batcher of one model version: windows of all requests share batches.

Invariants (each has a pure-asyncio test in tests/serving/test_batcher.py):
  * one future per window; a request awaits the futures of its windows;
  * the wait clock starts at the first (oldest) queued window: a batch leaves when it holds
    ``max_batch_size`` windows or when its oldest window has waited ``max_delay_s``;
  * the queue is bounded in windows: a request that does not fit is refused at once
    (``Overloaded``), never partially queued;
  * past the request's deadline, or when its task is cancelled (client gone), its windows
    still in the queue are removed and its futures cancelled;
  * cancelled (done) futures are dropped before a batch runs; results and errors are set
    only on futures not yet done; every output must have one row per window, else every
    window of the batch fails with ``InferenceFailed``;
  * a batch goes to an idle worker; while all workers are busy, windows keep queueing, so
    batches grow under load;
  * ``start()`` / ``stop()``: stop refuses new work, lets queued and running batches finish
    (within ``timeout``), then fails what is left with ``NotReady``.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import DeadlineExceeded, DiffresError, InferenceFailed, NotReady, Overloaded

log = logging.getLogger(__name__)
Result = dict[str, np.ndarray]


class BatchWorker(Protocol):
    backend_name: str

    @property
    def spec(self): ...

    async def run(self, batch: np.ndarray) -> Result: ...


class BatchMetrics(Protocol):
    def queue_changed(self, delta: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, seconds: float, backend: str, device: str) -> None: ...


class _NoMetrics:
    def queue_changed(self, delta: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, seconds: float, backend: str, device: str) -> None: ...


@dataclass(eq=False)
class _Item:
    window: np.ndarray  # [T, F]
    future: asyncio.Future
    enqueued: float  # loop.time()
    queued: bool = field(default=True)  # still in the batcher's deque


class Batcher:
    def __init__(self, workers: list[BatchWorker], max_batch_size: int, max_delay_s: float,
                 max_queue_size: int, metrics: BatchMetrics | None = None,
                 retry_after_s: float = 1.0) -> None:
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        self.workers = workers
        self.max_batch_size, self.max_delay_s = max_batch_size, max_delay_s
        self.max_queue_size, self.retry_after_s = max_queue_size, retry_after_s
        self.metrics = metrics or _NoMetrics()
        self._queue: deque[_Item] = deque()
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._accepting = False

    @property
    def depth(self) -> int:
        """Windows waiting (not yet in a batch)."""
        return len(self._queue)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._idle: asyncio.Queue = asyncio.Queue()
        for worker in self.workers:
            self._idle.put_nowait(worker)
        self._accepting = True
        self._loop_task = asyncio.create_task(self._loop(), name="batcher")

    async def submit(self, windows: np.ndarray, deadline: float) -> list[Result]:
        """Results of ``windows`` [n, T, F], in order. ``deadline`` is in loop time."""
        if not self._accepting:
            raise NotReady("model is not accepting requests (stopped or shutting down)")
        if len(self._queue) + len(windows) > self.max_queue_size:
            raise Overloaded(f"queue full: {len(self._queue)} windows queued, request needs "
                             f"{len(windows)}, limit {self.max_queue_size}",
                             retry_after_s=self.retry_after_s)
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(w, loop.create_future(), now) for w in windows]
        self._queue.extend(items)
        self.metrics.queue_changed(len(items))
        self._wakeup.set()
        try:
            async with asyncio.timeout_at(deadline):
                return list(await asyncio.gather(*(item.future for item in items)))
        except TimeoutError:
            raise DeadlineExceeded("request deadline passed before inference finished") from None
        finally:
            self._drop(items)

    def _drop(self, items: list[_Item]) -> None:
        """Cancel the futures of ``items`` still pending and take them out of the queue."""
        for item in items:
            if not item.future.done():
                item.future.cancel()
        queued = {id(item) for item in items if item.queued}
        if queued:
            self._queue = deque(i for i in self._queue if id(i) not in queued)
            for item in items:
                item.queued = False
            self.metrics.queue_changed(-len(queued))

    async def _loop(self) -> None:
        while True:
            worker = await self._idle.get()
            items = await self._collect()
            task = asyncio.create_task(self._run(worker, items), name="batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Item]:
        """Wait for a first window, then until the batch is full or the oldest window has
        waited ``max_delay_s``; return up to ``max_batch_size`` live windows."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            leave_at = self._queue[0].enqueued + self.max_delay_s
            while len(self._queue) < self.max_batch_size and loop.time() < leave_at:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(leave_at):
                        await self._wakeup.wait()
            items = self._take()
            if items:
                return items

    def _take(self) -> list[_Item]:
        items: list[_Item] = []
        taken = 0
        while self._queue and len(items) < self.max_batch_size:
            item = self._queue.popleft()
            item.queued = False
            taken += 1
            if not item.future.done():  # cancelled windows never run
                items.append(item)
        self.metrics.queue_changed(-taken)
        return items

    async def _run(self, worker: BatchWorker, items: list[_Item]) -> None:
        try:
            now = asyncio.get_running_loop().time()
            for item in items:
                self.metrics.queue_wait(now - item.enqueued)
            started = time.perf_counter()
            outputs = await worker.run(np.stack([item.window for item in items]))
            self.metrics.batch(len(items), time.perf_counter() - started, worker.backend_name,
                               worker.spec.device)
            _check_rows(outputs, len(items))
            for i, item in enumerate(items):
                if not item.future.done():
                    item.future.set_result({name: out[i] for name, out in outputs.items()})
        except asyncio.CancelledError:  # stop() gave up on this batch
            _fail(items, NotReady("model stopped before this window finished"))
            raise
        except Exception as exc:  # fan the failure out to every window of the batch
            if not isinstance(exc, DiffresError):
                log.exception("batch of %d windows failed", len(items))
                exc = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
            _fail(items, exc)
        finally:
            self._idle.put_nowait(worker)

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish queued and running batches within ``timeout``, then fail
        whatever is left with ``NotReady`` and stop the loop."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while (self._queue or self._running) and loop.time() < give_up:
            await asyncio.sleep(0.005)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._running):
            task.cancel()
        left = list(self._queue)
        self._queue.clear()
        self.metrics.queue_changed(-len(left))
        for item in left:
            item.queued = False
        _fail(left, NotReady("model stopped before this window ran"))


def _fail(items: list[_Item], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


def _check_rows(outputs: Result, rows: int) -> None:
    for name, out in outputs.items():
        if out.ndim == 0 or out.shape[0] != rows:
            raise InferenceFailed(f"output {name!r} has shape {list(out.shape)}; expected "
                                  f"{rows} rows, one per window")
