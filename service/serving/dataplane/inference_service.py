"""The data plane, protocol-free, and the routes' only door into the service: inference
(``classify``, ``compress``, ``infer_v2``), the model list (``models``, ``model``),
readiness (``check_ready``), ``reload``, and the lifecycle the app runs. Per request:
resolve (model, version), decode, compute features, window, await the batcher, assemble
the result (``results``). No HTTP here, and nothing below the repository leaks out.

CPU work (decoding, resampling, the front end, parsing spectrograms, assembling big
results) runs on a thread pool, never on the event loop.
"""

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.config import Settings
from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    InvalidParameter,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from service.manifest import PROBABILITIES
from service.serving.dataplane import v2_codec as v2
from service.serving.dataplane import windowing as W
from service.serving.dataplane.audio_decode import check_frame_length, decode_audio, resample
from service.serving.dataplane.form_upload import uploaded_file
from service.serving.dataplane.result_plots import visualization
from service.serving.dataplane.results import (
    Prepared,
    classify_result,
    clip_outputs,
    compress_npz,
    compress_result,
    output_frames,
)
from service.serving.dataplane.spectrogram_codec import (
    check_range,
    spectrogram_from_json,
    spectrogram_from_npy,
    validate_spectrogram,
)
from service.serving.metrics import Metrics
from service.serving.process_group import ProcessGroup
from service.serving.runtime.inflight import InFlight
from service.serving.runtime.model_repository import ModelRepository, ModelState, ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Payload:
    """Request body as received: an audio file (bare, or the ``file`` field of a multipart
    form, parsed with the rest on the thread pool), or a spectrogram as JSON or .npy."""

    kind: Literal["audio", "multipart", "json", "npy"]
    data: bytes
    content_type: str = ""  # the full header of a multipart body (its boundary)


def build_service(settings: Settings, group: ProcessGroup | None = None) -> "InferenceService":
    """The service with its own metrics and model repository: what the app assembles.
    ``group``: this process's siblings when several serve one port."""
    metrics = Metrics()
    return InferenceService(settings, ModelRepository(settings, metrics), metrics, group)


@dataclass(frozen=True)
class Windowed:
    """One input ready for the batcher: its [T, F] features and their model windows."""

    features: np.ndarray
    duration_s: float
    windows: np.ndarray  # [n, size, F]
    valid: np.ndarray  # [n] real frames per window
    starts: np.ndarray  # [n] first frame of each window


def windowed(model: ServedModel, features: np.ndarray, duration_s: float, hop: int
             ) -> Windowed:
    size = model.manifest.compressor.in_t_dim
    windows, valid = W.split_windows(features, size, model.pad_value, hop)
    return Windowed(features, duration_s, windows, valid,
                    W.window_starts(features.shape[0], size, hop))


class InferenceService:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Metrics,
                 group: ProcessGroup | None = None):
        self.settings, self.repository, self.metrics = settings, repository, metrics
        self.group = group
        self.accepting = True
        self.inflight = 0
        self._pool = ThreadPoolExecutor(settings.feature_thread_count(),
                                        thread_name_prefix="features")

    def begin_drain(self) -> None:
        """Refuse new requests from now on; those in flight carry on."""
        self.accepting = False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # Lifecycle, run by the app: check before anything loads, load, stop.
    def check_startup(self) -> None:
        """Raises ``ConfigError`` when the default model can never serve (see
        ``ModelRepository.check_default_model``)."""
        self.repository.check_default_model()

    async def start(self) -> None:
        await self.repository.start()
        if self.group is not None:
            self.group.mark_loaded()

    async def stop(self) -> None:
        """Refuse new requests, let batchers finish what is queued, release the workers."""
        self.begin_drain()
        await self.repository.stop()
        self.close()

    @property
    def requests(self) -> InFlight:
        """Every HTTP request in flight (the repository's unload grace periods wait on it)."""
        return self.repository.inflight

    # Control plane: what /models, /readyz, /admin and v2 metadata show.
    def models(self) -> dict:
        return {"default_model": self.settings.default_model,
                "models": self.repository.describe()}

    def model(self, name: str) -> dict:
        versions = [m for m in self.repository.describe() if m["name"] == name]
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}")
        ready = [m["version"] for m in versions if m["state"] == ModelState.READY]
        return {"name": name, "latest": max(ready) if ready else None, "versions": versions}

    def check_ready(self) -> None:
        """Raises ``NotReady`` saying why, unless the initial load has finished, every model
        (the default model among them) has a version serving and the server is not
        shutting down."""
        repo = self.repository
        if not self.accepting:
            raise NotReady("server is shutting down", code="shutting_down")
        if repo.ready and (self.group is None or not self.group.still_loading()):
            return
        if repo.ready:
            raise NotReady(f"not ready: {self.group.still_loading()} of {self.group.size} "
                           "serving processes still loading their models")
        states = ", ".join(f"{m['name']}/{m['version']}: {m['state']}"
                           + (f" ({m['reason']})" if m["reason"] else "")
                           for m in repo.describe())
        if not states:
            states = "no model found in the store" if repo.loaded.is_set() else "loading"
        default = repo.default_model_problem() if repo.loaded.is_set() else None
        raise NotReady(f"not ready: {default + '; ' if default else ''}{states}")

    async def reload(self, name: str | None = None, *, from_peer: bool = False
                     ) -> dict[str, dict]:
        """Rescan one model (or all) in the store and apply what changed; then the sibling
        processes do the same (unless the request came from one of them). The result is
        this process's."""
        result = await self.repository.reload(name)
        if self.group is not None and not from_peer:
            self.group.reload_others()
        return result

    def v2_metadata(self, name: str, version: str | None) -> dict:
        model = self._resolve_v2(name, version)
        versions = [m["version"] for m in self.repository.describe()
                    if m["name"] == name and m["state"] == ModelState.READY]
        return v2.model_metadata(model.manifest, model.backend, versions)

    def v2_ready(self, name: str, version: str | None) -> dict:
        model = self._resolve_v2(name, version)  # 404 unknown; 503 loading or failed
        if not self.accepting:
            raise NotReady("server is shutting down", code="shutting_down")
        return {"name": model.name, "version": str(model.version), "ready": True}

    def _resolve_v2(self, name: str, version: str | None) -> ServedModel:
        if version is not None and not (version.isdigit() and int(version) > 0):
            raise InvalidParameter(f"model version must be a positive integer, got {version!r}")
        return self.resolve(name, None if version is None else int(version))

    async def offload(self, fn, *args, deadline: float | None = None):
        """``fn(*args)`` on the thread pool. Past ``deadline`` (loop time) the request gets
        ``DeadlineExceeded`` and the job, if it has not started yet, never runs."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                return await future
        except TimeoutError:
            if timer.expired():
                raise DeadlineExceeded("request deadline passed while its input was being "
                                       "prepared") from None
            raise

    def model_label(self, name: str | None) -> str:
        """Metrics label for a requested model: its name if known, else "unknown"."""
        name = name or self.settings.default_model
        return name if any(n == name for n, _ in self.repository.models) else "unknown"

    def resolve(self, name: str | None, version: int | None) -> ServedModel:
        return self.repository.resolve(name or self.settings.default_model, version)

    @contextlib.contextmanager
    def admitted(self):
        """Admission of one request, entered by the route before it reads the body: refused
        at once while draining or at ``max_inflight_requests`` (so refused bodies are never
        read), counted in flight until it is answered."""
        if not self.accepting:
            raise NotReady("server is shutting down", code="shutting_down")
        if self.inflight >= self.settings.max_inflight_requests:  # bounds the pool's queue too
            raise Overloaded(f"{self.inflight} inference requests in flight; the limit is "
                             f"{self.settings.max_inflight_requests}")
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()

    async def classify(self, name: str | None, version: int | None, payload: Payload,
                       top_k: int = 5) -> dict:
        if top_k < 1:
            raise InvalidParameter(f"top_k must be >= 1, got {top_k}")
        model = self.resolve(name, version)
        p = await self._prepare(model, payload, self._hop(model))
        return classify_result(p, top_k, self.settings.detection_threshold)

    async def compress(self, name: str | None, version: int | None, payload: Payload) -> dict:
        model = self.resolve(name, version)
        if not model.can_compress:
            raise InvalidParameter(
                f"model {model.name}/{model.version} (compressor "
                f"{model.manifest.compressor.kind!r}) has no avgpool/maxpool/resolution_enc "
                "outputs; /compress needs a DiffRes model", code="compress_unsupported")
        p = await self._prepare(model, payload, model.manifest.compressor.in_t_dim)
        return await self.offload(compress_result, p)

    async def compress_npz(self, result: dict) -> bytes:
        """A ``compress`` result as an .npz archive (``results.compress_npz``)."""
        return await self.offload(compress_npz, result)

    async def visualize(self, name: str | None, version: int | None, payload: Payload,
                        top_k: int = 5) -> bytes:
        """PNG of the input's log-mel, frame scores, compressed map and top classes
        (``result_plots``). The body is decoded once; its windows run as /classify's
        (overlapping) and, for a model with compression outputs, as /compress's (back to
        back), in one batcher request (the input metrics count it once per pass)."""
        if top_k < 1:
            raise InvalidParameter(f"top_k must be >= 1, got {top_k}")
        model = self.resolve(name, version)
        deadline = self._deadline()
        w = await self.offload(self._payload_windows, model, payload, self._hop(model),
                               deadline=deadline)
        inputs = [w]
        if model.can_compress:
            inputs.append(windowed(model, w.features, w.duration_s,
                                   model.manifest.compressor.in_t_dim))
        prepared = await self._run(model, inputs, deadline)
        return await self.offload(visualization, prepared[0],
                                  prepared[1] if len(prepared) > 1 else None, top_k,
                                  self.settings.detection_threshold, deadline=deadline)

    async def infer_v2(self, name: str, version: str | None, body: bytes,
                       headers: Mapping[str, str]) -> tuple[bytes, int | None]:
        """One Open Inference Protocol request: the body (JSON or binary tensor data, as
        ``headers`` say) -> (response body, its JSON header's length for binary data, else
        None). Tensors go through the same checks, batcher and metrics as /classify."""
        model = self._resolve_v2(name, version)
        parsed = await self.offload(v2.decode_request, body, headers.get(v2.HEADER_LENGTH),
                                    headers.get("content-encoding"),
                                    self.settings.max_upload_bytes)
        plan = v2.plan(parsed, model.manifest)
        if plan.kind == v2.SPECTROGRAM:
            arrays = await self.infer_windows(model, plan.array)
        else:
            arrays = await self.classify_waveforms(model, plan.array, plan.sample_rate)
        return await self.offload(v2.encode_response, model.name, model.version, parsed.id,
                                  plan.outputs, arrays, model.manifest.labels)

    async def infer_windows(self, model: ServedModel, windows: np.ndarray
                            ) -> dict[str, np.ndarray]:
        """Each row of ``windows`` [B, in_t_dim, n_mels] (front-end units) is one model window:
        every model output stacked over the rows, [B, ...]. Same checks, limits (B * in_t_dim
        frames), batcher and metrics as a spectrogram sent to /classify."""
        deadline = self._deadline()
        c, f = model.manifest.compressor, model.manifest.frontend
        if windows.ndim != 3 or windows.shape[1] != c.in_t_dim:
            raise InvalidInput(f"windows must be [B, {c.in_t_dim}, {f.n_mels}], got "
                               f"{list(windows.shape)}")
        spec = await self.offload(self._spectrogram_windows, model, windows, deadline=deadline)
        (p,) = await self._run(model, [spec], deadline)
        return {name: np.stack([r[name] for r in p.results]) for name in p.results[0]}

    async def classify_waveforms(self, model: ServedModel, waves: np.ndarray,
                                 sample_rate: int) -> dict[str, np.ndarray]:
        """Each row of ``waves`` [B, N] (mono, ``sample_rate``) is one clip, classified as
        /classify classifies audio; all rows' windows are one batcher request. Returns
        ``probabilities`` [B, C] (per clip: ``windowing.aggregate`` over its overlapping
        windows, as /classify) and ``frame_scores`` [B, T] (T = 1 + N' // hop_length, N'
        samples at the model's rate)."""
        deadline = self._deadline()
        clips = await self.offload(self._waveform_windows, model, waves, sample_rate,
                                   self._hop(model), deadline=deadline)
        return clip_outputs(await self._run(model, clips, deadline))

    async def classify_stream_window(self, model: ServedModel, wave: np.ndarray) -> np.ndarray:
        """One model window of a stream (``stream_session``): [N] samples at the model's rate,
        N = (in_t_dim - 1) * hop_length -> its probabilities [C]. The same front end and
        batcher as /classify, so streams and uploads share batches; counted in the stream
        metrics (by the route), not in ``audio_seconds``."""
        deadline = self._deadline()
        w = await self.offload(self._stream_features, model, wave, deadline=deadline)
        results = await model.batcher.submit(w.windows, deadline)
        if len(results) != 1:
            raise InferenceFailed(f"{len(results)} results for 1 stream window")
        return np.asarray(results[0][PROBABILITIES], np.float64)

    def _stream_features(self, model: ServedModel, wave: np.ndarray) -> Windowed:
        size = model.manifest.compressor.in_t_dim
        features = self._log_mel(model, np.asarray(wave, np.float32))
        if features.shape[0] != size:
            raise InvalidInput(f"a stream window must give {size} frames, got "
                               f"{features.shape[0]}")
        return windowed(model, features, len(wave) / model.manifest.frontend.sample_rate, size)

    def _hop(self, model: ServedModel) -> int:
        """Frames between /classify window starts (``window_hop_fraction`` of a window)."""
        return W.hop_frames(model.manifest.compressor.in_t_dim, self.settings.window_hop_fraction)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s

    def _max_frames(self, model: ServedModel) -> int:
        return int(self.settings.max_audio_seconds / model.manifest.frontend.frame_hop_seconds) + 1

    async def _prepare(self, model: ServedModel, payload: Payload, hop: int) -> Prepared:
        deadline = self._deadline()
        item = await self.offload(self._payload_windows, model, payload, hop,
                                  deadline=deadline)
        (prepared,) = await self._run(model, [item], deadline)
        return prepared

    async def _run(self, model: ServedModel, inputs: list[Windowed], deadline: float
                   ) -> list[Prepared]:
        """Submit the windows of every input as one request to the batcher (one admission)
        and give each input its results."""
        windows = inputs[0].windows if len(inputs) == 1 else np.concatenate(
            [w.windows for w in inputs])
        results = await model.batcher.submit(windows, deadline)
        if len(results) != len(windows):
            raise InferenceFailed(f"{len(results)} results for {len(windows)} windows")
        prepared, start = [], 0
        for w in inputs:
            p = Prepared(model, w.features, w.duration_s, w.windows, w.valid, w.starts,
                         results[start:start + len(w.windows)])
            start += len(w.windows)
            self._count(p)
            prepared.append(p)
        return prepared

    # Thread-pool side: everything from the body to the model's windows.
    def _payload_windows(self, model: ServedModel, payload: Payload, hop: int) -> Windowed:
        """The body's [T, F] log-mel, its duration, and its windows (a window every ``hop``
        frames)."""
        f = model.manifest.frontend
        if payload.kind in ("audio", "multipart"):
            data = payload.data if payload.kind == "audio" else uploaded_file(
                payload.data, payload.content_type)
            wave = decode_audio(data, f.sample_rate, self.settings.max_audio_seconds)
            return windowed(model, self._log_mel(model, wave), len(wave) / f.sample_rate, hop)
        parse = spectrogram_from_json if payload.kind == "json" else spectrogram_from_npy
        max_frames = self._max_frames(model)
        spec = validate_spectrogram(parse(payload.data, max_frames * f.n_mels), f.n_mels,
                                    max_frames, f.value_range)
        return windowed(model, spec, spec.shape[0] * f.frame_hop_seconds, hop)

    def _spectrogram_windows(self, model: ServedModel, windows: np.ndarray) -> Windowed:
        """[B, in_t_dim, F] model windows, checked as a /classify spectrogram, back to back."""
        f = model.manifest.frontend
        spec = validate_spectrogram(windows.reshape(-1, windows.shape[2]), f.n_mels,
                                    self._max_frames(model), f.value_range)
        return windowed(model, spec, spec.shape[0] * f.frame_hop_seconds,
                        model.manifest.compressor.in_t_dim)

    def _waveform_windows(self, model: ServedModel, waves: np.ndarray, sample_rate: int,
                          hop: int) -> list[Windowed]:
        """[B, N] clips -> per row its log-mel, seconds and windows."""
        f = model.manifest.frontend
        if waves.ndim != 2 or waves.size == 0 or sample_rate < 1:
            raise InvalidInput(f"waveforms must be a non-empty [B, N] at a positive sample "
                               f"rate, got {list(waves.shape)} at {sample_rate} Hz")
        seconds = waves.size / sample_rate
        if seconds > self.settings.max_audio_seconds:
            raise PayloadTooLarge(f"waveforms hold {seconds:.1f} s of audio; the limit is "
                                  f"{self.settings.max_audio_seconds:g} s")
        if not np.all(np.isfinite(waves)):
            raise InvalidInput("waveform contains NaN or Inf samples")
        features = []
        for row in waves.astype(np.float32, copy=False):
            wave = resample(row, sample_rate, f.sample_rate)
            features.append(windowed(model, self._log_mel(model, wave),
                                     len(wave) / f.sample_rate, hop))
        return features

    @staticmethod
    def _log_mel(model: ServedModel, wave: np.ndarray) -> np.ndarray:
        """[N] samples at the model's rate -> [1 + N // hop_length, n_mels] via its front end."""
        f = model.manifest.frontend
        check_frame_length(len(wave), f)  # 422 audio_too_short, not a front-end failure
        mel = next(iter(model.frontend.run(wave[np.newaxis]).values()))[0]
        expected = 1 + len(wave) // f.hop_length
        if mel.shape != (expected, f.n_mels):
            raise InferenceFailed(f"front end gave {list(mel.shape)}, expected "
                                  f"[{expected}, {f.n_mels}]")
        check_range(mel, "audio", f.value_range)  # NaN/Inf or overflow never reaches the model
        return np.ascontiguousarray(mel, np.float32)

    def _count(self, p: Prepared) -> None:
        name = p.model.name
        self.metrics.audio_seconds.labels(name).inc(p.duration_s)
        self.metrics.input_frames.labels(name).inc(p.features.shape[0])
        self.metrics.output_frames.labels(name).inc(output_frames(p))


