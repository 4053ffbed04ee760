"""The model repository: which model versions are served, their workers, batchers and
front ends, and their load state. ``start()`` loads and warms every selected version;
``stop()`` drains batchers and releases workers. No HTTP here."""

import asyncio
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from service.config import Settings
from service.errors import ModelNotFound, NotReady
from service.manifest import Manifest
from service.serving.backends import Backend, make_backend
from service.serving.batcher import Batcher
from service.serving.metrics import Metrics
from service.serving.store import ARTIFACTS, COMPRESSION_OUTPUTS, StoreEntry, scan_store
from service.serving.workers import (
    Worker,
    WorkerSpec,
    plan_workers,
    resolve_devices,
    visible_gpu_count,
)

log = logging.getLogger(__name__)
LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


@dataclass
class ServedModel:
    entry: StoreEntry
    state: str = LOADING
    reason: str | None = None
    backend: str = ""
    devices: list[str] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    batcher: Batcher | None = None
    frontend: Backend | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> int:
        return self.entry.version

    @property
    def manifest(self) -> Manifest:
        assert self.entry.manifest is not None
        return self.entry.manifest

    @property
    def pad_value(self) -> float:
        """Log-mel value of digital silence: the front end's floor."""
        return math.log(self.manifest.frontend.log_floor)

    @property
    def can_compress(self) -> bool:
        names = {o.name for o in self.manifest.outputs}
        return all(o in names for o in COMPRESSION_OUTPUTS)

    def describe(self) -> dict:
        m = self.entry.manifest
        info = {"name": self.name, "version": self.version, "state": self.state,
                "reason": self.reason, "backend": self.backend, "devices": self.devices,
                "workers": len(self.workers)}
        if m is not None:
            info |= {"labels": m.labels, "kind": m.compressor.kind,
                     "input": {"sample_rate": m.frontend.sample_rate,
                               "n_mels": m.frontend.n_mels,
                               "frame_hop_seconds": m.frontend.frame_hop_seconds,
                               "window_frames": m.compressor.in_t_dim,
                               "window_output_frames": m.compressor.out_t_dim,
                               "pad_value": self.pad_value},
                     "outputs": [o.name for o in m.outputs],
                     "operations": ["classify"] + (["compress"] if self.can_compress else []),
                     "metrics": m.metrics}
        return info


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.models: dict[tuple[str, int], ServedModel] = {}
        self.loaded = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Loading finished and every configured model version is serving."""
        return (self.loaded.is_set() and bool(self.models)
                and all(m.state == READY for m in self.models.values()))

    async def start(self) -> None:
        s = self.settings
        entries = await asyncio.to_thread(scan_store, s.model_store, s.backend, s.models or None)
        self.models = {(e.name, e.version): ServedModel(e, backend=s.backend) for e in entries}
        if not entries:
            log.error("no model found in %s", s.model_store)
        devices = resolve_devices(s.devices, await asyncio.to_thread(visible_gpu_count, s.backend))
        specs = plan_workers(devices, s.instances_per_device, os.cpu_count() or 1,
                             models=sum(e.ok for e in entries),
                             intra_op_threads=s.intra_op_threads)
        try:
            for served in self.models.values():
                await self._load(served, specs)
        finally:
            self.loaded.set()

    async def _load(self, served: ServedModel, specs: list[WorkerSpec]) -> None:
        if not served.entry.ok:
            return self._fail(served, "; ".join(served.entry.problems))
        served.devices = sorted({spec.device for spec in specs})
        try:
            served.frontend = self._backend(served, "frontend", specs[0], threads=1)
            await asyncio.to_thread(served.frontend.load, specs[0].device)
            served.workers = [Worker(spec, lambda sp, m=served: self._backend(m, "model", sp))
                              for spec in specs]
            warmup = self._warmup_batches(served)
            for worker in served.workers:
                await worker.start(warmup)
            await asyncio.to_thread(self._check_frontend, served)
        except Exception as exc:  # a broken artifact must not take the server down
            log.exception("loading %s/%s failed", served.name, served.version)
            await self._release(served)
            return self._fail(served, f"load failed: {type(exc).__name__}: {exc}")
        s = self.settings
        served.batcher = Batcher(served.workers, s.max_batch_size, s.max_queue_delay_ms / 1000,
                                 s.max_queue_size, self.metrics.for_model(served.name))
        await served.batcher.start()
        served.state = READY
        for device in served.devices:
            self.metrics.model_info.labels(served.name, str(served.version), served.backend,
                                           device).set(1)
        log.info("serving %s/%s (%s on %s, %d workers)", served.name, served.version,
                 served.backend, ",".join(served.devices), len(served.workers))

    def _fail(self, served: ServedModel, reason: str) -> None:
        served.state, served.reason = FAILED, reason
        log.error("model %s/%s is not served: %s", served.name, served.version, reason)

    def _backend(self, served: ServedModel, role: str, spec: WorkerSpec,
                 threads: int | None = None) -> Backend:
        m = served.manifest
        model_file, frontend_file = ARTIFACTS[served.backend]
        if role == "model":
            path, inp, outs = model_file, "spectrogram", [o.name for o in m.outputs]
        else:
            path = frontend_file
            inp = m.frontend_inputs[0].name if m.frontend_inputs else "waveform"
            outs = [o.name for o in m.frontend_outputs] or None
        inp = m.inputs[0].name if role == "model" and m.inputs else inp
        return make_backend(served.backend, served.entry.path / path, inp, outs,
                            self.settings.onnx_providers, threads or spec.threads)

    def _warmup_batches(self, served: ServedModel) -> list[np.ndarray]:
        c = served.manifest.compressor
        shape = (c.in_t_dim, c.in_f_dim)
        return [np.full((n, *shape), served.pad_value, np.float32)
                for n in sorted({1, self.settings.max_batch_size})]

    @staticmethod
    def _check_frontend(served: ServedModel) -> None:
        f = served.manifest.frontend
        out = served.frontend.run(np.zeros((1, f.sample_rate), np.float32))
        mel = next(iter(out.values()))
        expected = (1, 1 + f.sample_rate // f.hop_length, f.n_mels)
        if mel.shape != expected:
            raise ValueError(f"front end gives {list(mel.shape)}, manifest implies "
                             f"{list(expected)}")

    async def _release(self, served: ServedModel) -> None:
        if served.batcher is not None:
            await served.batcher.stop(self.settings.drain_timeout_s)
        for worker in served.workers:
            await worker.stop()
        if served.frontend is not None:
            served.frontend.close()

    async def stop(self) -> None:
        for served in self.models.values():
            await self._release(served)
            if served.state == READY:
                served.state = STOPPED

    def resolve(self, name: str, version: int | None) -> ServedModel:
        """The served version (latest ready one when ``version`` is None)."""
        versions = {v: m for (n, v), m in self.models.items() if n == name and v > 0}
        if not versions:
            known = sorted({n for n, _ in self.models})
            raise ModelNotFound(f"unknown model {name!r}; known models: {known}")
        if version is None:
            ready = [v for v, m in versions.items() if m.state == READY]
            version = max(ready) if ready else max(versions)
        served = versions.get(version)
        if served is None:
            raise ModelNotFound(f"model {name!r} has no version {version}; versions: "
                                f"{sorted(versions)}")
        if served.state != READY:
            why = f": {served.reason}" if served.reason else ""
            raise NotReady(f"model {name}/{version} is {served.state}{why}")
        return served

    def describe(self) -> list[dict]:
        return [m.describe() for m in self.models.values()]
