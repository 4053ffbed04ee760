"""One serving process's view of its siblings when several share a port (``processes`` > 1;
the supervisor is ``service.serving.http.process_supervisor``).

Shared memory holds one flag per process, set once its initial model load has finished:
readiness waits for every flag, so a load balancer never sees "ready" while some process
behind the port would still answer 503. A reload asked of one process reaches the others
through the supervisor (SIGHUP), so every process serves the same versions.
"""

import os
import signal
from dataclasses import dataclass
from typing import Any

RELOAD_SIGNAL = signal.SIGHUP  # supervisor -> processes: rescan the store
RELOAD_REQUEST = signal.SIGUSR1  # a process -> the supervisor: tell the others to rescan


@dataclass
class ProcessGroup:
    """``loaded``: a shared ``multiprocessing.Array('b', size)``; ``origin``: a shared
    ``multiprocessing.Value('i')`` naming the process that asked for the last reload."""

    index: int
    loaded: Any
    origin: Any
    supervisor_pid: int

    @property
    def size(self) -> int:
        return len(self.loaded)

    def mark_loaded(self, loaded: bool = True) -> None:
        self.loaded[self.index] = int(loaded)

    def still_loading(self) -> int:
        """Processes of the group whose initial load has not finished."""
        return self.size - sum(self.loaded[:])

    def reload_others(self) -> None:
        """Ask the supervisor to make every other process rescan the store."""
        self.origin.value = self.index
        os.kill(self.supervisor_pid, RELOAD_REQUEST)
