"""Dynamic batcher of one model version: windows of all requests share batches.

Invariants (each has a pure-asyncio test in tests/serving/runtime/test_batcher.py or
tests/serving/runtime/test_reliability_batcher.py):
  * one future per window; a request awaits the futures of its windows;
  * the wait clock starts at the first (oldest) queued window: a batch leaves when it holds
    ``max_batch_size`` windows or when its oldest window has waited ``max_delay_s``;
  * the queue never holds more than ``max_queue_size`` windows. A request enters it in
    slices of at most ``slice_size`` windows, one slice queued at a time: the next slice
    enters once the previous one has been taken into batches, so a request of any length
    needs room for one slice only. Only the first slice can be refused (``Overloaded``, at
    once, nothing queued); a later slice waits for room, and while one does, new requests
    are refused, so accepted requests finish first;
  * past the request's deadline, or when its task is cancelled (client gone), its windows
    still in the queue are removed and its futures cancelled;
  * cancelled (done) futures are dropped before a batch runs; results and errors are set
    only on futures not yet done; every output must have one row per window, else every
    window of the batch fails with ``InferenceFailed``; a window whose output row holds
    NaN/Inf fails alone;
  * a batch goes to an idle worker; while all workers are busy, windows keep queueing, so
    batches grow under load;
  * watchdog: a batch still running after ``batch_timeout_s`` fails (``InferenceFailed``);
    after any failed batch the worker is asked to ``recover`` (probe, or replace) before it
    takes another batch;
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

    async def recover(self, hung: bool) -> bool: ...


class BatchMetrics(Protocol):
    def queue_changed(self, delta: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, seconds: float, backend: str, device: str) -> None: ...

    def worker_replaced(self) -> None: ...


class _NoMetrics:
    def queue_changed(self, delta: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, seconds: float, backend: str, device: str) -> None: ...

    def worker_replaced(self) -> None: ...


@dataclass(eq=False)
class _Item:
    window: np.ndarray  # [T, F]
    future: asyncio.Future
    enqueued: float  # loop.time()
    queued: bool = field(default=True)  # still in the batcher's deque


class Batcher:
    def __init__(self, workers: list[BatchWorker], max_batch_size: int, max_delay_s: float,
                 max_queue_size: int, metrics: BatchMetrics | None = None,
                 retry_after_s: float = 1.0, batch_timeout_s: float | None = None) -> None:
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        self.workers = workers
        self.max_batch_size, self.max_delay_s = max_batch_size, max_delay_s
        self.max_queue_size, self.retry_after_s = max_queue_size, retry_after_s
        self.slice_size = min(max_batch_size, max_queue_size)
        self.batch_timeout_s = batch_timeout_s
        self.metrics = metrics or _NoMetrics()
        self._queue: deque[_Item] = deque()
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._accepting = False
        self._starved = 0  # accepted requests waiting for queue room
        self._wakeup = asyncio.Event()  # the queue grew
        self._room = asyncio.Event()  # the queue shrank (or the batcher stopped)

    @property
    def depth(self) -> int:
        """Windows waiting (not yet in a batch)."""
        return len(self._queue)

    async def start(self) -> None:
        self._idle: asyncio.Queue = asyncio.Queue()
        for worker in self.workers:
            self._idle.put_nowait(worker)
        self._accepting = True
        self._loop_task = asyncio.create_task(self._loop(), name="batcher")

    async def submit(self, windows: np.ndarray, deadline: float) -> list[Result]:
        """Results of ``windows`` [n, T, F], in order. ``deadline`` is in loop time."""
        self._check_accepting()
        first = min(len(windows), self.slice_size)
        if self._starved or len(self._queue) + first > self.max_queue_size:
            raise Overloaded(f"queue full: {len(self._queue)} windows queued, "
                             f"{self._starved} accepted requests waiting for room, limit "
                             f"{self.max_queue_size}", retry_after_s=self.retry_after_s)
        items: list[_Item] = []
        try:
            async with asyncio.timeout_at(deadline):
                for start in range(0, len(windows), self.slice_size):
                    part = windows[start:start + self.slice_size]
                    if start:
                        await self._room_for(len(part), items[-self.slice_size:])
                    items.extend(self._enqueue(part))
                return list(await asyncio.gather(*(item.future for item in items)))
        except TimeoutError:
            raise DeadlineExceeded("request deadline passed before inference finished") from None
        finally:
            self._drop(items)

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise NotReady("model is not accepting requests (stopped or shutting down)")

    def _enqueue(self, windows: np.ndarray) -> list[_Item]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(w, loop.create_future(), now) for w in windows]
        self._queue.extend(items)
        self.metrics.queue_changed(len(items))
        self._wakeup.set()
        return items

    async def _room_for(self, n: int, previous: list[_Item]) -> None:
        """Wait until ``previous`` (this request's last slice) has left the queue, then until
        ``n`` more windows fit. Raises ``NotReady`` if the batcher stops meanwhile."""
        self._check_accepting()
        while any(item.queued for item in previous):
            await self._queue_shrank()
        self._starved += 1
        try:
            while len(self._queue) + n > self.max_queue_size:
                await self._queue_shrank()
        finally:
            self._starved -= 1

    async def _queue_shrank(self) -> None:
        self._room.clear()
        await self._room.wait()
        self._check_accepting()

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
            self._room.set()

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
        self._room.set()
        return items

    async def _run(self, worker: BatchWorker, items: list[_Item]) -> None:
        trouble = await self._execute(worker, items)
        if trouble is not None:
            try:
                if await worker.recover(hung=trouble == "hung"):
                    self.metrics.worker_replaced()
            except Exception:  # keep the worker: its next batch fails and retries recovery
                log.exception("recovering worker %s failed", worker.spec.label)
        self._idle.put_nowait(worker)

    async def _execute(self, worker: BatchWorker, items: list[_Item]) -> str | None:
        """Run one batch and answer every window. None if it ran, else "failed" or "hung"."""
        now = asyncio.get_running_loop().time()
        for item in items:
            self.metrics.queue_wait(now - item.enqueued)
        started = time.perf_counter()
        watchdog = asyncio.timeout(self.batch_timeout_s)
        try:
            async with watchdog:
                outputs = await worker.run(np.stack([item.window for item in items]))
            _check_rows(outputs, len(items))
        except asyncio.CancelledError:  # stop() gave up on this batch
            _fail(items, NotReady("model stopped before this window finished"))
            raise
        except Exception as exc:  # fan the failure out to every window of the batch
            hung = isinstance(exc, TimeoutError) and watchdog.expired()
            if hung:
                exc = InferenceFailed(f"batch not finished within batch_timeout_s="
                                      f"{self.batch_timeout_s:g} s; its worker is replaced")
            elif not isinstance(exc, DiffresError):
                log.exception("batch of %d windows failed", len(items))
                exc = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
            _fail(items, exc)
            return "hung" if hung else "failed"
        self.metrics.batch(len(items), time.perf_counter() - started, worker.backend_name,
                           worker.spec.device)
        finite = {name: _finite_rows(out) for name, out in outputs.items()}
        for i, item in enumerate(items):
            if item.future.done():
                continue
            row = {name: out[i] for name, out in outputs.items()}
            if bad := [name for name, ok in finite.items() if not ok[i]]:
                item.future.set_exception(InferenceFailed(
                    f"model output {bad} holds NaN or Inf for this input"))
            else:
                item.future.set_result(row)
        return None

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish queued and running batches within ``timeout``, then fail
        whatever is left with ``NotReady`` and stop the loop."""
        self._accepting = False
        self._room.set()  # requests waiting for room see the stop and give up
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


def _finite_rows(out: np.ndarray) -> np.ndarray:
    """Per window (row): does this output hold only finite values? One call per batch."""
    if out.dtype.kind not in "fc":
        return np.ones(out.shape[0], dtype=bool)
    return np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)


def _check_rows(outputs: Result, rows: int) -> None:
    for name, out in outputs.items():
        if out.ndim == 0 or out.shape[0] != rows:
            raise InferenceFailed(f"output {name!r} has shape {list(out.shape)}; expected "
                                  f"{rows} rows, one per window")
