"""Requests in flight, counted by epoch, for RCU-style grace periods.

The edge calls ``enter()`` / ``leave()`` around every request. ``wait_for_earlier()`` returns
once every request that entered before the call has left. The repository hides a model
version from ``resolve`` first and then waits for such a grace period before releasing it:
a request that started later cannot have resolved it, and one that started earlier has
finished. No HTTP here: the edge only hands over the calls.
"""

import asyncio
from collections import Counter


class InFlight:
    def __init__(self) -> None:
        self._epoch = 0
        self._active: Counter[int] = Counter()  # epoch -> requests in flight from it

    @property
    def count(self) -> int:
        """Requests in flight now."""
        return sum(self._active.values())

    def enter(self) -> int:
        self._active[self._epoch] += 1
        return self._epoch

    def leave(self, epoch: int) -> None:
        self._active[epoch] -= 1
        if self._active[epoch] <= 0:
            del self._active[epoch]

    async def wait_for_earlier(self, timeout: float, poll_s: float = 0.01) -> bool:
        """True once every request that entered before this call has left; False if some
        are still in flight after ``timeout`` seconds."""
        horizon = self._epoch
        self._epoch += 1
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while any(epoch <= horizon for epoch in self._active):
            if loop.time() >= give_up:
                return False
            await asyncio.sleep(poll_s)
        return True
