"""The batcher's invariants, each with a fake worker and plain asyncio (no model, no HTTP).

Every test runs on a virtual clock (``tests.serving.virtual_time``): loop time moves only
when nothing can run, so delays, deadlines and "sleep, then look" give the same result on
any machine, however slow or busy, and durations are asserted exactly."""

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.serving.runtime.batcher import Batcher
from service.serving.runtime.workers import WorkerSpec
from tests.serving.virtual_time import run


@dataclass
class FakeWorker:
    """Returns per-window sums; records every batch; can be slow, gated or broken."""

    delay: float = 0.0
    gate: asyncio.Event | None = None
    fail: bool = False
    bad_rows: bool = False
    batches: list[np.ndarray] = field(default_factory=list)
    recoveries: list[bool] = field(default_factory=list)  # hung? per recover() call
    backend_name: str = "fake"
    spec: WorkerSpec = WorkerSpec("cpu", 0, 1)

    async def recover(self, hung):
        self.recoveries.append(hung)
        return hung

    async def run(self, batch):
        self.batches.append(batch)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        rows = batch.shape[0] + (1 if self.bad_rows else 0)
        return {"sum": np.resize(batch.sum(axis=(1, 2)), rows), "first": batch[:, 0, :]}


def windows(n, start=0.0):
    return np.stack([np.full((4, 3), start + i, np.float32) for i in range(n)])


async def started(worker=None, **kw):
    kw = {"max_batch_size": 4, "max_delay_s": 0.01, "max_queue_size": 16} | kw
    batcher = Batcher([worker or FakeWorker()], **kw)
    await batcher.start()
    return batcher


def deadline(seconds=5.0):
    return asyncio.get_running_loop().time() + seconds


def test_results_in_order_one_per_window():
    async def main():
        b = await started()
        out = await b.submit(windows(6), deadline())
        await b.stop()
        return out

    out = run(main())
    assert [float(r["sum"]) for r in out] == [12.0 * i for i in range(6)]


def test_request_result_identical_alone_or_inside_a_full_batch():
    """With a row-wise backend the batcher is bit-exact wherever a window lands."""

    async def main():
        rng = np.random.default_rng(0)
        target = rng.normal(size=(2, 4, 3)).astype(np.float32)
        others = [rng.normal(size=(1, 4, 3)).astype(np.float32) for _ in range(6)]
        worker = FakeWorker()
        b = await started(worker, max_batch_size=8, max_delay_s=0.05)
        alone = await b.submit(target, deadline())
        tasks = [b.submit(o, deadline()) for o in others[:3]] + [b.submit(target, deadline())]
        together = await asyncio.gather(*tasks, *(b.submit(o, deadline()) for o in others[3:]))
        await b.stop()
        return worker, alone, together[3]

    worker, alone, batched = run(main())
    assert [len(x) for x in worker.batches] == [2, 8]
    for a, c in zip(alone, batched, strict=True):
        assert a["sum"].tobytes() == c["sum"].tobytes()
        assert a["first"].tobytes() == c["first"].tobytes()


def test_batch_leaves_when_full_without_waiting_for_delay():
    async def main():
        worker = FakeWorker()
        b = await started(worker, max_delay_s=5.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.submit(windows(4), deadline(30))
        elapsed = loop.time() - t0
        await b.stop()
        return worker, elapsed

    worker, elapsed = run(main())
    assert [len(x) for x in worker.batches] == [4]
    assert elapsed < 5.0  # virtual time: waiting for the delay would make it exactly 5.0


def test_partial_batch_leaves_after_oldest_waited_delay():
    async def main():
        worker = FakeWorker()
        b = await started(worker, max_delay_s=0.4)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.create_task(b.submit(windows(1), deadline()))
        await asyncio.sleep(0.2)  # a second request arrives half way: same batch, same clock
        second = asyncio.create_task(b.submit(windows(1), deadline()))
        await asyncio.gather(first, second)
        elapsed = loop.time() - t0
        await b.stop()
        return worker, elapsed

    worker, elapsed = run(main())
    assert [len(x) for x in worker.batches] == [2]
    assert elapsed == pytest.approx(0.4)  # the clock started at the first window (0.6 if second)


def test_windows_of_concurrent_requests_share_batches():
    async def main():
        worker = FakeWorker()
        b = await started(worker, max_batch_size=8, max_delay_s=0.05)
        outs = await asyncio.gather(*(b.submit(windows(2, 10 * k), deadline())
                                      for k in range(4)))
        await b.stop()
        return worker, outs

    worker, outs = run(main())
    assert [len(x) for x in worker.batches] == [8]
    for k, out in enumerate(outs):
        assert [float(r["sum"]) for r in out] == [12.0 * (10 * k + i) for i in range(2)]


def test_full_queue_refuses_at_once_and_queues_nothing():
    async def main():
        gate = asyncio.Event()
        worker = FakeWorker(gate=gate)
        b = await started(worker, max_batch_size=2, max_queue_size=4)
        running = asyncio.create_task(b.submit(windows(2), deadline()))  # occupies the worker
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.submit(windows(n), deadline())) for n in (3, 2)]
        await asyncio.sleep(0)  # first slices of 2 + 2: the queue is full
        with pytest.raises(Overloaded) as info:
            await b.submit(windows(1), deadline())
        depth = b.depth
        gate.set()
        await asyncio.gather(running, *queued)
        await b.stop()
        return info.value, depth

    error, depth = run(main())
    assert depth == 4 and error.retry_after_s > 0


def test_deadline_raises_and_drops_queued_windows():
    async def main():
        gate = asyncio.Event()
        worker = FakeWorker(gate=gate)
        b = await started(worker, max_batch_size=1)
        blocker = asyncio.create_task(b.submit(windows(1), deadline()))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await b.submit(windows(3, 100), deadline(0.05))
        depth_after = b.depth
        gate.set()
        await blocker
        await asyncio.sleep(0.05)
        await b.stop()
        return worker, depth_after

    worker, depth_after = run(main())
    assert depth_after == 0
    assert [float(x[0, 0, 0]) for x in worker.batches] == [0.0]  # the late windows never ran


def test_cancelled_request_windows_dropped_before_running():
    async def main():
        gate = asyncio.Event()
        worker = FakeWorker(gate=gate)
        b = await started(worker, max_batch_size=2)
        blocker = asyncio.create_task(b.submit(windows(1), deadline()))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(b.submit(windows(2, 50), deadline()))  # client disconnects
        kept = asyncio.create_task(b.submit(windows(1, 7), deadline()))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.wait([gone])
        depth_after_cancel = b.depth
        gate.set()
        await asyncio.gather(blocker, kept)
        await b.stop()
        return worker, depth_after_cancel, gone

    worker, depth, gone = run(main())
    assert gone.cancelled() and depth == 1
    ran = [float(w[0, 0]) for batch in worker.batches for w in batch]
    assert ran == [0.0, 7.0]


def test_backend_error_fans_out_to_every_window_and_worker_survives():
    async def main():
        worker = FakeWorker(fail=True)
        b = await started(worker, max_delay_s=0.05)
        results = await asyncio.gather(b.submit(windows(2), deadline()),
                                       b.submit(windows(1), deadline()), return_exceptions=True)
        worker.fail = False
        after = await b.submit(windows(1), deadline())
        await b.stop()
        return results, after

    results, after = run(main())
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert float(after[0]["sum"]) == 0.0


def test_wrong_output_length_fails_the_batch():
    async def main():
        b = await started(FakeWorker(bad_rows=True))
        with pytest.raises(InferenceFailed, match="one per window"):
            await b.submit(windows(2), deadline())
        await b.stop()

    run(main())


def test_results_only_set_on_pending_futures():
    """A window whose request timed out while its batch ran is not resolved twice."""

    async def main():
        worker = FakeWorker(delay=0.1)
        b = await started(worker)
        with pytest.raises(DeadlineExceeded):
            await b.submit(windows(2), deadline(0.03))
        await asyncio.sleep(0.15)  # the batch finishes after the request gave up: no error
        out = await b.submit(windows(1), deadline())
        await b.stop()
        return out

    assert float(run(main())[0]["sum"]) == 0.0


def test_windows_queue_while_the_worker_is_busy_so_batches_grow():
    """No batching delay: windows arriving while the only worker runs a batch wait, and then
    leave together as the next batch."""

    async def main():
        gate = asyncio.Event()
        worker = FakeWorker(gate=gate)
        b = await started(worker, max_batch_size=8, max_delay_s=0.0, max_queue_size=64)
        first = asyncio.create_task(b.submit(windows(1), deadline()))
        await asyncio.sleep(0.01)  # its batch holds the worker (closed gate)
        later = [asyncio.create_task(b.submit(windows(1, 1 + k), deadline())) for k in range(5)]
        await asyncio.sleep(0.01)  # all five queued
        gate.set()
        outs = await asyncio.gather(first, *later)
        await b.stop()
        return worker, outs

    worker, outs = run(main())
    assert [len(x) for x in worker.batches] == [1, 5]
    assert [float(o[0]["sum"]) for o in outs] == [12.0 * k for k in range(6)]


def test_several_workers_run_batches_at_the_same_time():
    """Both workers hold a batch while neither has finished (a shared gate keeps them
    running): batches go to idle workers in parallel, not one after the other."""

    async def main():
        gate = asyncio.Event()
        workers = [FakeWorker(gate=gate), FakeWorker(gate=gate)]
        b = Batcher(workers, max_batch_size=1, max_delay_s=0.0, max_queue_size=8)
        await b.start()
        tasks = [asyncio.create_task(b.submit(windows(1, k), deadline())) for k in range(2)]
        await asyncio.sleep(0.01)
        running = [len(w.batches) for w in workers]  # started, none finished (gate closed)
        gate.set()
        outs = await asyncio.gather(*tasks)
        await b.stop()
        return running, outs

    running, outs = run(main())
    assert running == [1, 1]
    assert [float(o[0]["sum"]) for o in outs] == [0.0, 12.0]


def test_stop_finishes_queued_work_then_refuses():
    async def main():
        worker = FakeWorker(delay=0.02)
        b = await started(worker, max_batch_size=1)
        pending = [asyncio.create_task(b.submit(windows(1, i), deadline())) for i in range(3)]
        await asyncio.sleep(0)
        await b.stop(timeout=5)
        outs = await asyncio.gather(*pending)
        with pytest.raises(NotReady):
            await b.submit(windows(1), deadline())
        return outs

    outs = run(main())
    assert [float(o[0]["sum"]) for o in outs] == [0.0, 12.0, 24.0]


def test_stop_timeout_fails_leftovers_with_not_ready():
    async def main():
        worker = FakeWorker(gate=asyncio.Event())  # never opens
        b = await started(worker, max_batch_size=1)
        pending = [asyncio.create_task(b.submit(windows(1), deadline())) for _ in range(2)]
        await asyncio.sleep(0.02)
        await b.stop(timeout=0.05)
        return await asyncio.gather(*pending, return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, NotReady) for r in results)
