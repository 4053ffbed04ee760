"""Reliability of the batcher and the workers, in plain asyncio (no model, no HTTP):
slice-wise admission (long requests, a truthful queue bound, accepted requests first), the
watchdog and worker recovery, per-window NaN checks, and a Hypothesis property test of the
queue bound and of "every request gets exactly one outcome".

All but the real-worker test run on a virtual clock (``tests.serving.virtual_time``): loop
time moves only when nothing can run, so they hold on any machine however slow, and the
property test's examples replay identically."""

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.serving.runtime.batcher import Batcher
from service.serving.runtime.workers import Worker, WorkerSpec
from tests.serving.virtual_time import run


@dataclass
class DepthRecorder:
    """BatchMetrics that tracks the queue depth and its maximum; ``on_take`` runs once,
    synchronously, the next time windows leave the queue."""

    depth: int = 0
    max_depth: int = 0
    replaced: int = 0
    on_take: object = None

    def queue_changed(self, delta):
        self.depth += delta
        self.max_depth = max(self.max_depth, self.depth)
        if delta < 0 and self.on_take is not None:
            hook, self.on_take = self.on_take, None
            hook()

    def queue_wait(self, seconds): ...

    def batch(self, size, seconds, backend, device): ...

    def worker_replaced(self):
        self.replaced += 1


@dataclass
class StepWorker:
    """Runs a batch only when the test releases a step; window value -99 hangs forever,
    value -7 gives a NaN row; records batches and recover() calls."""

    steps: asyncio.Semaphore | None = None
    delay: float = 0.0
    batches: list = field(default_factory=list)
    recoveries: list = field(default_factory=list)
    backend_name: str = "fake"
    spec: WorkerSpec = WorkerSpec("cpu", 0, 1)

    async def run(self, batch):
        self.batches.append(batch[:, 0, 0].tolist())
        if self.steps is not None:
            await self.steps.acquire()
        if np.any(batch[:, 0, 0] == -99):
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        sums = batch.sum(axis=(1, 2))
        sums[batch[:, 0, 0] == -7] = np.nan
        return {"sum": sums}

    async def recover(self, hung):
        self.recoveries.append(hung)
        return hung


def windows(n, value=0.0):
    return np.full((n, 2, 2), value, np.float32) + np.arange(n, dtype=np.float32)[:, None, None]


def deadline(seconds=10.0):
    return asyncio.get_running_loop().time() + seconds


def test_request_far_longer_than_the_queue_succeeds_and_the_bound_holds():
    async def main():
        rec = DepthRecorder()
        b = Batcher([StepWorker()], max_batch_size=4, max_delay_s=0.001, max_queue_size=6,
                    metrics=rec)
        await b.start()
        out = await b.submit(windows(50), deadline())
        await b.stop()
        return out, rec

    out, rec = run(main())
    assert [float(r["sum"]) for r in out] == [4.0 * i for i in range(50)]
    assert rec.max_depth <= 4  # one slice queued at a time, never the 50 windows


def test_only_the_first_slice_is_refused_and_waiting_requests_go_first():
    async def main():
        rec = DepthRecorder()
        worker = StepWorker(steps=asyncio.Semaphore(0))
        b = Batcher([worker], max_batch_size=2, max_delay_s=0.0, max_queue_size=4, metrics=rec)
        await b.start()
        blocker = asyncio.create_task(b.submit(windows(2, 100), deadline()))
        await asyncio.sleep(0.01)  # the blocker's batch holds the worker
        long = asyncio.create_task(b.submit(windows(4, 10), deadline()))
        other = asyncio.create_task(b.submit(windows(2, 20), deadline()))
        await asyncio.sleep(0.01)  # queue: long[0:2] + other = 4, full
        with pytest.raises(Overloaded):
            await b.submit(windows(1), deadline())
        late = []  # arrives while long's first slice leaves: takes the room long wanted
        rec.on_take = lambda: late.append(asyncio.create_task(b.submit(windows(1, 30),
                                                                         deadline())))
        worker.steps.release()  # blocker done; long's first slice runs
        await asyncio.sleep(0.01)
        starved, depth = b._starved, b.depth  # long waits for room: other (2) + late (1)
        with pytest.raises(Overloaded, match="waiting for room"):
            await b.submit(windows(1), deadline())  # 3 + 1 fits, but long goes first
        for _ in range(4):
            worker.steps.release()
        results = await asyncio.gather(blocker, long, other, *late)
        await b.stop()
        return results, starved, depth, rec

    results, starved, depth, rec = run(main())
    assert starved == 1 and depth == 3 and rec.max_depth <= 4
    assert [float(r["sum"]) for r in results[1]] == [40.0, 44.0, 48.0, 52.0]


def test_a_waiting_slice_gives_up_when_the_batcher_stops():
    async def main():
        worker = StepWorker(steps=asyncio.Semaphore(0))
        b = Batcher([worker], max_batch_size=2, max_delay_s=0.0, max_queue_size=2)
        await b.start()
        long = asyncio.create_task(b.submit(windows(6), deadline()))
        await asyncio.sleep(0.01)
        stopping = asyncio.create_task(b.stop(timeout=0.1))
        result = await asyncio.gather(long, return_exceptions=True)
        await stopping
        return result[0], b.depth

    error, depth = run(main())
    assert isinstance(error, NotReady) and depth == 0


def test_watchdog_fails_a_hung_batch_in_time_and_recovers_the_worker():
    async def main():
        rec = DepthRecorder()
        worker = StepWorker()
        b = Batcher([worker], max_batch_size=4, max_delay_s=0.02, max_queue_size=16,
                    metrics=rec, batch_timeout_s=0.2)
        await b.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        hung, neighbour = await asyncio.gather(b.submit(windows(1, -99), deadline()),
                                               b.submit(windows(1, 5), deadline()),
                                               return_exceptions=True)
        elapsed = loop.time() - t0
        after = await b.submit(windows(2), deadline())
        await b.stop()
        return hung, neighbour, elapsed, after, worker, rec

    hung, neighbour, elapsed, after, worker, rec = run(main())
    assert isinstance(hung, InferenceFailed) and "batch_timeout_s" in hung.message
    assert isinstance(neighbour, InferenceFailed)  # same batch: fails with it
    # virtual time: the batch left after max_delay_s and failed batch_timeout_s later, long
    # before the 10 s request deadline
    assert elapsed == pytest.approx(0.02 + 0.2)
    assert worker.recoveries == [True] and rec.replaced == 1
    assert [float(r["sum"]) for r in after] == [0.0, 4.0]


def test_failed_batch_asks_the_worker_to_recover_and_a_nan_row_fails_alone():
    async def main():
        worker = StepWorker()
        b = Batcher([worker], max_batch_size=4, max_delay_s=0.05, max_queue_size=16)
        await b.start()
        nan, fine = await asyncio.gather(b.submit(windows(1, -7), deadline()),
                                         b.submit(windows(1, 3), deadline()),
                                         return_exceptions=True)
        await b.stop()
        return nan, fine, worker

    nan, fine, worker = run(main())
    assert len(worker.batches) == 1  # both windows in one batch
    assert isinstance(nan, InferenceFailed) and "NaN" in nan.message
    assert float(fine[0]["sum"]) == 12.0 and worker.recoveries == []


class FlakyBackend:
    """A backend for the real ``Worker``: hangs or breaks when told. A hang (window value 99)
    sets ``hanging`` and lasts until the test sets ``release``."""

    name, device = "flaky", "cpu"
    hanging = threading.Event()
    release = threading.Event()

    def __init__(self, registry):
        self.registry, self.broken = registry, False
        registry.append(self)

    def load(self, device):
        pass

    def run(self, batch):
        if batch[0, 0, 0] == 99:
            FlakyBackend.hanging.set()
            FlakyBackend.release.wait(120)  # the worker's daemon thread is abandoned meanwhile
        if self.broken or batch[0, 0, 0] == 66:
            self.broken = True
            raise RuntimeError("device lost")
        return {"sum": batch.sum(axis=(1, 2))}

    def close(self):
        pass


def test_real_worker_probe_keeps_a_healthy_backend_and_replaces_a_dead_or_hung_one():
    """Real threads, so real time; the hung call is released only after everything else has
    finished, so waiting for it anywhere would deadlock (until the 60 s guard fails it)."""

    async def main():
        made = []
        worker = Worker(WorkerSpec("cpu", 0, 1), lambda spec: FlakyBackend(made),
                        probe_timeout_s=60)  # a healthy probe passes however slow the machine
        await worker.start([windows(1)])
        kept = await worker.recover(hung=False)  # healthy: the probe passes
        with pytest.raises(RuntimeError):
            await worker.run(windows(1, 66))  # breaks this backend for good
        replaced_dead = await worker.recover(hung=False)
        hang = asyncio.ensure_future(worker.run(windows(1, 99)))
        await asyncio.to_thread(FlakyBackend.hanging.wait, 60)  # its thread is stuck in it
        hang.cancel()
        replaced_hung = await worker.recover(hung=True)
        out = await worker.run(windows(1, 1))
        await worker.stop(timeout=60)
        return kept, replaced_dead, replaced_hung, out, made

    FlakyBackend.hanging.clear()
    FlakyBackend.release.clear()
    try:
        kept, replaced_dead, replaced_hung, out, made = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        FlakyBackend.release.set()  # lets the abandoned thread end
    assert FlakyBackend.hanging.is_set()
    assert (kept, replaced_dead, replaced_hung) == (False, True, True)
    assert len(made) == 3 and float(out["sum"][0]) == 4.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=25),
       gaps=st.lists(st.floats(0, 0.004), min_size=25, max_size=25),
       max_batch=st.integers(1, 8), max_queue=st.integers(1, 24),
       workers=st.integers(1, 3), delay=st.floats(0, 0.003))
def test_property_queue_bound_and_exactly_one_outcome_per_request(sizes, gaps, max_batch,
                                                                  max_queue, workers, delay):
    async def main():
        rec = DepthRecorder()
        b = Batcher([StepWorker(delay=delay) for _ in range(workers)], max_batch_size=max_batch,
                    max_delay_s=0.001, max_queue_size=max_queue, metrics=rec)
        await b.start()

        async def one(i, n):
            await asyncio.sleep(gaps[i])
            before = b.depth
            try:
                out = await b.submit(windows(n, 1000 * i), deadline(5))
            except Overloaded:
                assert b.depth == before  # refused at once, nothing queued
                return "refused"
            expected = [4.0 * (1000 * i) + 4.0 * k for k in range(n)]
            assert [float(r["sum"]) for r in out] == expected
            return "ok"

        outcomes = await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes)),
                                        return_exceptions=True)
        await b.stop()
        return outcomes, rec, b

    outcomes, rec, b = run(main())
    assert all(o in ("ok", "refused") for o in outcomes), outcomes  # no other outcome
    assert rec.max_depth <= max_queue and rec.depth == 0 and b._starved == 0
    assert "ok" in outcomes  # whoever comes first finds an idle queue


def test_deadline_while_waiting_for_room_drops_everything():
    async def main():
        worker = StepWorker(steps=asyncio.Semaphore(0))
        b = Batcher([worker], max_batch_size=2, max_delay_s=0.0, max_queue_size=2)
        await b.start()
        blocker = asyncio.create_task(b.submit(windows(2), deadline()))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            await b.submit(windows(6), deadline(0.1))
        depth = b.depth
        worker.steps.release()
        await blocker
        await b.stop()
        return depth

    assert run(main()) == 0


def test_grace_period_waits_for_earlier_requests_only():
    from service.serving.runtime.inflight import InFlight

    async def main():
        tracker = InFlight()
        early = tracker.enter()
        waiting = asyncio.create_task(tracker.wait_for_earlier(timeout=5))
        await asyncio.sleep(0.03)
        late = tracker.enter()  # began after the grace period started: not waited for
        first_look = waiting.done()
        tracker.leave(early)
        done = await waiting
        timed_out = await tracker.wait_for_earlier(timeout=0.05)  # ``late`` still in flight
        tracker.leave(late)
        return first_look, done, timed_out, tracker.count

    assert run(main()) == (False, True, False, 0)


def test_edge_middleware_counts_every_request_in_flight():
    """Regression: an idle tracker must not be mistaken for "no tracker"."""
    from service.serving.http.middleware import EdgeMiddleware
    from service.serving.metrics import Metrics
    from service.serving.runtime.inflight import InFlight

    tracker, seen = InFlight(), []

    async def app(scope, receive, send):
        seen.append(tracker.count)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        edge = EdgeMiddleware(app, metrics=Metrics(), max_upload_bytes=10, inflight=tracker)
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}

        async def send(message):
            pass

        await edge(scope, None, send)

    run(main())
    assert seen == [1] and tracker.count == 0
