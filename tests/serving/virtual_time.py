"""An asyncio event loop on a virtual clock, for tests of timing logic (the batcher's
delays, deadlines, watchdog) that must not depend on how fast or busy the machine is.

``loop.time()`` starts at 0 and moves only when nothing is runnable: the loop then jumps to
its next timer instead of sleeping. Running code takes no loop time, so a batch that leaves
"0.4 s after its first window" leaves at exactly 0.4, and ``await asyncio.sleep(0.01)`` in
a test returns only after everything that could run has run. Only for code that never
waits on threads or real I/O: those cannot wake a loop whose clock has jumped past them.

    run(main())  # like asyncio.run(asyncio.wait_for(main(), 60)), on virtual time
"""

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks for a timer: advances the loop's clock to it instead."""

    def __init__(self, loop: "VirtualTimeLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O (or another thread) can wake us
            return super().select(None)
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a fresh VirtualTimeLoop. ``timeout`` is loop time: it ends a deadlock
    at once (nothing runnable, so the clock jumps to it) and costs nothing otherwise."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))
