"""Workers: each owns one backend instance (its own session/module) and one thread, and
runs whole batches. Which workers exist is a pure plan: (devices x instances) -> specs."""

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.serving.backends import Backend

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
    """Workers of one model version. CPU workers of all ``models`` share ``cpu_cores``:
    each gets cores // (CPU workers in the process) intra-op threads, at least 1, unless
    ``intra_op_threads`` fixes it. GPU workers get 1 CPU thread."""
    cpu_workers = sum(d == "cpu" for d in devices) * instances_per_device * max(models, 1)
    threads = intra_op_threads or max(1, cpu_cores // max(cpu_workers, 1))
    return [WorkerSpec(device, i, threads if device == "cpu" else 1)
            for device in devices for i in range(instances_per_device)]


def visible_gpu_count(backend: str) -> int:
    """GPUs the backend can use; never imports torch for the ONNX backend."""
    if backend == "torchscript":
        import torch

        return torch.cuda.device_count()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 1
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return sum(line.startswith("GPU ") for line in out.splitlines())


class Worker:
    """One backend on one device with one thread. ``start()`` loads and warms up;
    ``run()`` executes a batch off the event loop; ``stop()`` releases the backend."""

    def __init__(self, spec: WorkerSpec, backend_factory: Callable[[WorkerSpec], Backend]):
        self.spec = spec
        self.backend = backend_factory(spec)
        self._executor: ThreadPoolExecutor | None = None

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def start(self, warmup_batches: list[np.ndarray]) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"worker-{self.spec.label}")
        started = time.perf_counter()
        await loop.run_in_executor(self._executor, self.backend.load, self.spec.device)
        for batch in warmup_batches:
            await self.run(batch)
        log.info("worker %s (%s) loaded and warm in %.2f s", self.spec.label,
                 self.backend.name, time.perf_counter() - started)

    async def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._executor is None:
            raise RuntimeError("worker not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.backend.run, batch)

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.backend.close)
        finally:
            executor.shutdown(wait=False)
