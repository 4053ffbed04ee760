"""The model repository: which model versions are served, their workers, batchers and
front ends, and their load state. ``start()`` loads and warms the versions that
``version_policy`` selects; ``reload()`` applies what changed in the store since; ``stop()``
drains batchers and releases workers. No HTTP here.

Version policy (``Settings.version_policy``, as Triton's): ``latest`` serves the newest
version of each model that loads (versions are tried newest first; an older one serves only
when every newer one fails), ``all`` every version, ``specific:1,3`` those versions. A
version present but not selected is listed with state ``not_selected`` and the reason; it
gets no workers, and the thread plan divides the cores among the served versions only.

Hot reload (``reload(name)``, and every ``poll_interval_s`` when set): a new or changed
version is loaded and warmed first, then swapped in (``resolve`` sees it at once); a version
gone from the store, or replaced, is hidden from ``resolve`` and released after a grace
period (every request that started before has finished, see ``inflight.py``) and after its
batcher has drained. A version that fails to load never replaces a serving one. Reloads follow
the policy: under ``latest`` a new newest version that loads replaces the served one, which
becomes ``not_selected``; if the served one leaves the store, the next newest is loaded.

Default model (``default_model``): a store that does not hold it is a configuration error,
found by ``missing_default_model`` with one directory listing. ``check_default_model`` (run
by the app before anything loads) makes startup fail with a message naming the model, the
store and the models it holds: a typo in the setting or a wrong store mount then shows up as
a failed deploy at once, not as a server that answers 404 to every request without
``model=``. The one exception is ``poll_interval_s > 0`` with the model allowed by
``models``: the store is then expected to change under a running server, so it starts, logs
the same message, and stays unready (``/readyz`` 503 with the message) until polling finds
the model. A default model that is in the store but has no version serving (every selected
version failed to load) also keeps the server unready: that is known only after loading,
which runs after startup so that liveness answers meanwhile, and a reload can fix it.
"""

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.config import Settings
from service.errors import ConfigError, ModelNotFound, NotReady
from service.manifest import (
    BACKENDS,
    COMPRESSION_OUTPUTS,
    FRONTEND_OUTPUT,
    SPECTROGRAM,
    WAVEFORM,
    Manifest,
)
from service.serving.metrics import Metrics
from service.serving.runtime.backend import Backend
from service.serving.runtime.backend_registry import make_backend, visible_gpu_count
from service.serving.runtime.batcher import Batcher
from service.serving.runtime.inflight import InFlight
from service.serving.runtime.model_store import (
    StoreEntry,
    load_entry,
    model_names,
    scan_store,
    signature,
    version_dirs,
)
from service.serving.runtime.native_frontend import (
    largest_difference,
    native_frontend,
    tolerance,
)
from service.serving.runtime.version_plan import missing_default_model, planned_versions
from service.serving.runtime.workers import (
    Worker,
    WorkerSpec,
    plan_workers,
    resolve_devices,
)

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    """A model version's state, as /models lists it."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"
    STOPPED = "stopped"
    NOT_SELECTED = "not_selected"  # in the store, not selected by version_policy: never loaded


LOADING, READY, FAILED = ModelState.LOADING, ModelState.READY, ModelState.FAILED
UNLOADING, STOPPED, NOT_SELECTED = ModelState.UNLOADING, ModelState.STOPPED, ModelState.NOT_SELECTED


@dataclass
class ServedModel:
    entry: StoreEntry
    state: ModelState = LOADING
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

    @functools.cached_property
    def pad_value(self) -> np.ndarray:
        """[F]: the front end's output for digital silence, what pads a short window."""
        return np.asarray(self.manifest.frontend.silence, np.float32)

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
                               "pad_value": m.frontend.silence,
                               "frontend": m.frontend.type,
                               "frontend_runs_on": getattr(self.frontend, "name", None),
                               "value_range": m.frontend.value_range},
                     "outputs": [o.name for o in m.outputs],
                     "operations": ["classify"] + (["compress"] if self.can_compress else []),
                     "metrics": m.metrics}
        return info


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.models: dict[tuple[str, int], ServedModel] = {}
        self.retiring: list[ServedModel] = []  # hidden, released after a grace period
        self.inflight = InFlight()  # the edge counts requests in it
        self.loaded = asyncio.Event()
        self._lock = asyncio.Lock()  # one load or reload at a time
        self._specs: list[WorkerSpec] = []
        self._rejected: dict[tuple[str, int], tuple] = {}  # signatures that failed to load
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        """Loading finished, every model has a version serving, the default model too."""
        if not self.loaded.is_set() or not self.models:
            return False
        serving = {n for (n, _), m in self.models.items() if m.state == READY}
        return self.settings.default_model in serving and all(n in serving
                                                              for n, _ in self.models)

    def check_default_model(self) -> None:
        """Before loading: raise ``ConfigError`` if ``default_model`` is not in the store (or
        left out by ``models``), unless polling may still bring it in (see the module
        docstring for why)."""
        problem = missing_default_model(self.settings)
        if problem is None:
            return
        s = self.settings
        if s.poll_interval_s > 0 and (not s.models or s.default_model in s.models):
            log.error("%s; not ready until polling (every %g s) finds it", problem,
                      s.poll_interval_s)
            return
        problem += ("; set default_model (DIFFRES_DEFAULT_MODEL, --default-model) to one of "
                    "them or add the model to the store")
        log.critical("refusing to start: %s", problem)
        raise ConfigError(problem)

    def default_model_problem(self) -> str | None:
        """Why the default model does not serve, for /readyz; None when it does."""
        name = self.settings.default_model
        if any(n == name and m.state == READY for (n, _), m in self.models.items()):
            return None
        return missing_default_model(self.settings) or (
            f"default_model {name!r} has no version serving")

    async def start(self) -> None:
        s = self.settings
        async with self._lock:
            try:
                await self._start(s)
            finally:
                self.loaded.set()
        if s.poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="poll-store")

    async def _start(self, s: Settings) -> None:
        entries = await asyncio.to_thread(scan_store, s.model_store, s.backend, s.models or None)
        self.models = {(e.name, e.version): ServedModel(e, backend=s.backend) for e in entries}
        if not entries:
            log.error("no model found in %s", s.model_store)
        devices = resolve_devices(s.devices, await asyncio.to_thread(visible_gpu_count, s.backend))
        self._specs = plan_workers(devices, s.instances_per_device, s.cores_per_process(),
                                   models=planned_versions(s.version_policy, entries),
                                   intra_op_threads=s.intra_op_threads)
        for name in dict.fromkeys(e.name for e in entries):
            await self._load_selected(name)

    async def _load_selected(self, name: str) -> None:
        """Load the versions of ``name`` that the policy selects, newest first (under
        ``latest``, until one serves); mark the others not selected."""
        policy = self.settings.version_policy
        group = sorted((m for (n, _), m in self.models.items() if n == name),
                       key=lambda m: m.version, reverse=True)
        chosen = None
        for served in group:
            if served.version > 0 and not self._selected(served.version, chosen):
                self._skip(served, self._skip_reason(chosen))
                continue
            await self._load(served)
            if served.state == READY:
                chosen = served.version
        if policy.kind == "specific":
            absent = [v for v in policy.versions if all(m.version != v for m in group)]
            if absent:
                log.warning("version_policy=%s: model %s has no version %s in the store",
                            policy, name, ",".join(map(str, absent)))

    def _selected(self, version: int, chosen: int | None) -> bool:
        """Whether to load ``version``, given the version already chosen to serve (under
        ``latest``, every version older than the one serving is not selected)."""
        policy = self.settings.version_policy
        return policy.wants(version) and not (policy.kind == "latest" and chosen is not None
                                              and version < chosen)

    def _skip_reason(self, chosen: int | None) -> str:
        policy = self.settings.version_policy
        if policy.kind == "latest" and chosen is not None:
            return f"not selected by version_policy=latest (version {chosen} is served)"
        return f"not selected by version_policy={policy}"

    @staticmethod
    def _skip(served: ServedModel, reason: str) -> None:
        served.state, served.reason = NOT_SELECTED, reason
        log.info("model %s/%s is not loaded: %s", served.name, served.version, reason)

    async def _load(self, served: ServedModel) -> None:
        if not served.entry.ok:
            return self._fail(served, "; ".join(served.entry.problems))
        specs, s = self._specs, self.settings
        served.devices = sorted({spec.device for spec in specs})
        try:
            served.frontend = self._backend(served, "frontend", specs[0], threads=1)
            await asyncio.to_thread(served.frontend.load, specs[0].device)
            served.workers = [Worker(spec, lambda sp, m=served: self._backend(m, "model", sp),
                                     s.batch_timeout_s) for spec in specs]
            warmup = self._warmup_batches(served)
            for worker in served.workers:
                await worker.start(warmup)
            await asyncio.to_thread(self._check_frontend, served)
            if s.native_frontend:
                await asyncio.to_thread(self._use_native_frontend, served)
        except Exception as exc:  # a broken artifact must not take the server down
            log.exception("loading %s/%s failed", served.name, served.version)
            await self._release(served)
            return self._fail(served, f"load failed: {type(exc).__name__}: {exc}")
        served.batcher = Batcher(served.workers, s.max_batch_size, s.max_queue_delay_ms / 1000,
                                 s.max_queue_size, self.metrics.for_model(served.name),
                                 batch_timeout_s=s.batch_timeout_s)
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
        files = BACKENDS[served.backend]
        if role == "model":
            path, inp, outs = files.model, SPECTROGRAM, [o.name for o in m.outputs]
        else:
            path = files.frontend
            inp = m.frontend_inputs[0].name if m.frontend_inputs else WAVEFORM
            outs = [o.name for o in m.frontend_outputs] or None
        inp = m.inputs[0].name if role == "model" and m.inputs else inp
        return make_backend(served.backend, served.entry.path / path, inp, outs,
                            self.settings.onnx_providers, threads or spec.threads,
                            sha256=m.artifacts[path].sha256)

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

    @staticmethod
    def _use_native_frontend(served: ServedModel) -> None:
        """Swap the front-end file for its numpy twin where one exists and agrees with it."""
        m = served.manifest
        name = m.frontend_outputs[0].name if m.frontend_outputs else FRONTEND_OUTPUT
        try:
            native = native_frontend(m.frontend, name)
            if native is None or served.frontend is None:
                return
            difference = largest_difference(native, served.frontend, m.frontend.sample_rate)
        except Exception:  # an optimisation: without its check, the file serves
            log.exception("%s/%s: checking the numpy front end failed; the exported file "
                          "computes it", served.name, served.version)
            return
        limit = tolerance(m)
        if difference > limit:
            log.warning("%s/%s: the numpy %s front end differs from the exported one by %.3g "
                        "(tolerance %g); the exported file computes it", served.name,
                        served.version, m.frontend.type, difference, limit)
            return
        served.frontend.close()
        served.frontend = native
        log.info("%s/%s: front end computed in numpy (within %.1e of the exported file)",
                 served.name, served.version, difference)

    async def _release(self, served: ServedModel) -> None:
        if served.batcher is not None:
            await served.batcher.stop(self.settings.drain_timeout_s)
        for worker in served.workers:
            await worker.stop()
        if served.frontend is not None:
            served.frontend.close()

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        async with self._lock:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for served in self.models.values():
                await self._release(served)
                if served.state == READY:
                    served.state = STOPPED

    def resolve(self, name: str, version: int | None) -> ServedModel:
        """The served version (latest ready one when ``version`` is None). 404 for a version
        not in the store or not selected by the policy (the message says which)."""
        versions = {v: m for (n, v), m in self.models.items() if n == name and v > 0}
        if not versions:
            known = sorted({n for n, _ in self.models})
            why = ""
            if name == self.settings.default_model:
                why = (f" (it is the default model; "
                       f"{missing_default_model(self.settings) or 'it is not loaded'})")
            raise ModelNotFound(f"unknown model {name!r}; known models: {known}{why}")
        selected = [v for v, m in versions.items() if m.state != NOT_SELECTED]
        if version is None:
            ready = [v for v, m in versions.items() if m.state == READY]
            version = max(ready or selected or versions)
        served = versions.get(version)
        serving = sorted(v for v, m in versions.items() if m.state == READY)
        if served is None:
            raise ModelNotFound(f"model {name!r} has no version {version}; versions in the "
                                f"store: {sorted(versions)}, served: {serving}")
        if served.state == NOT_SELECTED:
            raise ModelNotFound(f"model {name!r} version {version} is not served: "
                                f"{served.reason}; served: {serving}")
        if served.state != READY:
            why = f": {served.reason}" if served.reason else ""
            raise NotReady(f"model {name}/{version} is {served.state}{why}")
        return served

    def describe(self) -> list[dict]:
        return [m.describe() for m in [*self.models.values(), *self.retiring]]

    # -- hot reload ------------------------------------------------------------------------

    async def reload(self, name: str | None = None) -> dict[str, dict]:
        """Rescan the store for ``name`` (or every model) and apply the changes; per model:
        versions ``loaded``, ``unloaded`` (released after their requests), ``failed``
        ("version" -> reason; a serving version stays), ``unchanged``."""
        if not self.loaded.is_set():
            raise NotReady("models are still loading")
        async with self._lock:
            names = await self._names_to_scan(name)
            return {n: await self._reload_model(n) for n in names}

    async def _names_to_scan(self, name: str | None) -> list[str]:
        """Model names to rescan. A client's ``name`` is only compared with the names found
        by listing the store and the names being served, never joined to a path."""
        on_disk = set(await asyncio.to_thread(model_names, self.settings.model_store))
        served = {n for n, _ in self.models}
        allowed = set(self.settings.models) or None
        if name is None:
            return sorted(allowed or on_disk | served)
        if name not in on_disk | served or (allowed is not None and name not in allowed):
            raise ModelNotFound(f"no model {name!r} in the store"
                                + (" (or not in the models setting)" if allowed else ""))
        return [name]

    async def _reload_model(self, name: str) -> dict:
        """Versions are considered newest first. Selected ones that are new or changed are
        loaded (under ``latest``, until one serves); then the versions the policy does not
        select (under ``latest``: older than the one serving) are hidden and retired, and
        versions gone from the store are too. Loads come first, so requests without
        ``version`` always find one serving."""
        report: dict = {"loaded": [], "unloaded": [], "failed": {}, "unchanged": []}
        disk = await asyncio.to_thread(version_dirs, self.settings.model_store / name)
        current = {v: m for (n, v), m in self.models.items() if n == name}
        chosen = None
        for version, path in sorted(disk.items(), reverse=True):
            if not self._selected(version, chosen):
                continue
            sig = await asyncio.to_thread(signature, path)
            old = current.get(version)
            if (old is not None and old.state != NOT_SELECTED and old.entry.signature == sig) \
                    or self._rejected.get((name, version)) == sig:
                report["unchanged"].append(version)
            else:
                new = await self._load_version(name, version, path, old)
                if new.state == READY:
                    report["loaded"].append(version)
                else:
                    report["failed"][str(version)] = new.reason  # JSON object keys are strings
            served = self.models.get((name, version))
            if served is not None and served.state == READY:
                chosen = version
        for version, path in disk.items():
            if not self._selected(version, chosen):
                self._deselect(name, version, path, self._skip_reason(chosen), report)
        for version, old in current.items():
            if version not in disk:
                del self.models[(name, version)]
                if version > 0 and old.state != NOT_SELECTED:
                    self._retire(old)
                    report["unloaded"].append(version)
        for key in ("loaded", "unloaded", "unchanged"):
            report[key].sort()
        if not disk and name in self.settings.models:  # configured, but nothing on disk
            self.models[(name, 0)] = ServedModel(StoreEntry(
                name, 0, self.settings.model_store / name,
                problems=["no version directory"]), state=FAILED, reason="no version directory")
        if any(report[k] for k in ("loaded", "unloaded", "failed")):
            log.info("reloaded %s: %s", name, report)
        return report

    async def _load_version(self, name: str, version: int, path, old: ServedModel | None
                            ) -> ServedModel:
        """Load ``path`` as a candidate; swap it in unless it failed while ``old`` serves."""
        entry = await asyncio.to_thread(load_entry, path, name, version, self.settings.backend)
        new = ServedModel(entry, backend=self.settings.backend)
        await self._load(new)
        if new.state != READY and old is not None and old.state == READY:
            self._rejected[(name, version)] = entry.signature
            log.error("%s/%s changed on disk but does not load; the loaded one stays: %s",
                      name, version, new.reason)
            return new
        self._rejected.pop((name, version), None)
        self.models[(name, version)] = new
        if old is not None:
            self._retire(old)
        return new

    def _deselect(self, name: str, version: int, path: Path, reason: str, report: dict) -> None:
        """Show ``name/version`` as not selected; retire it if it was serving."""
        current = self.models.get((name, version))
        if current is not None and current.state == NOT_SELECTED:
            current.reason = reason
            return
        entry = current.entry if current is not None else StoreEntry(name, version, path)
        self.models[(name, version)] = ServedModel(entry, state=NOT_SELECTED, reason=reason,
                                                   backend=self.settings.backend)
        if current is not None and current.state == READY:
            self._retire(current)
            report["unloaded"].append(version)
            log.info("%s/%s is no longer served: %s", name, version, reason)

    def _retire(self, served: ServedModel) -> None:
        """Hide ``served`` (done by the caller) and release it in the background once the
        requests that could have resolved it have finished."""
        if served.state != READY:
            return
        served.state = UNLOADING
        self.retiring.append(served)
        task = asyncio.create_task(self._release_later(served), name="unload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_later(self, served: ServedModel) -> None:
        try:
            if not await self.inflight.wait_for_earlier(self.settings.drain_timeout_s):
                log.warning("unloading %s/%s: requests still in flight after %.0f s",
                            served.name, served.version, self.settings.drain_timeout_s)
            await self._release(served)
        finally:
            served.state = STOPPED
            self.retiring.remove(served)
            current = self.models.get((served.name, served.version))
            if current is None or current.state != READY:
                for device in served.devices:
                    with contextlib.suppress(KeyError):  # already gone with a twin
                        self.metrics.model_info.remove(served.name, str(served.version),
                                                       served.backend, device)
            log.info("unloaded %s/%s", served.name, served.version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.reload()
            except Exception:
                log.exception("polling the model store failed")
