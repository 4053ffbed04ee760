"""The data plane, protocol-free: resolve (model, version), decode, compute features,
window, await the batcher, assemble result dicts. No HTTP here; routes call this.

CPU work (decoding, resampling, the front end, parsing spectrograms, assembling big
results) runs on a thread pool, never on the event loop.
"""

import asyncio
import contextlib
import functools
import logging
import math
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
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from service.manifest import FRAME_SCORES, PROBABILITIES
from service.serving import windowing as W
from service.serving.audio import check_frame_length, decode_audio, resample
from service.serving.codecs import (
    check_range,
    spectrogram_from_json,
    spectrogram_from_npy,
    validate_spectrogram,
)
from service.serving.metrics import Metrics
from service.serving.repository import ModelRepository, ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Payload:
    """Request body as received: audio file bytes, or a spectrogram as JSON or .npy."""

    kind: Literal["audio", "json", "npy"]
    data: bytes


@dataclass
class Prepared:
    model: ServedModel
    features: np.ndarray  # [T, F]
    duration_s: float
    windows: np.ndarray  # [n, size, F]
    valid: np.ndarray  # [n]
    starts: np.ndarray  # [n] first frame of each window
    results: list[dict[str, np.ndarray]]  # one per window

    @functools.cached_property
    def frame_scores(self) -> np.ndarray:
        """[T], one score per input frame (``windowing.frame_scores``): computed once for the
        response and the output-frames metric."""
        return W.frame_scores([r[FRAME_SCORES] for r in self.results], self.features.shape[0],
                              self.starts)


class InferenceService:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Metrics):
        self.settings, self.repository, self.metrics = settings, repository, metrics
        self.accepting = True
        self.inflight = 0
        self._pool = ThreadPoolExecutor(settings.feature_threads, thread_name_prefix="features")

    def begin_drain(self) -> None:
        """Refuse new requests from now on; those in flight carry on."""
        self.accepting = False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

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
        spec = await self.offload(validate_spectrogram, windows.reshape(-1, windows.shape[2]),
                                  f.n_mels, self._max_frames(model), f.value_range,
                                  deadline=deadline)
        (p,) = await self._run(model, [(spec, spec.shape[0] * f.frame_hop_seconds)], deadline,
                               c.in_t_dim)
        return {name: np.stack([r[name] for r in p.results]) for name in p.results[0]}

    async def classify_waveforms(self, model: ServedModel, waves: np.ndarray,
                                 sample_rate: int) -> dict[str, np.ndarray]:
        """Each row of ``waves`` [B, N] (mono, ``sample_rate``) is one clip, classified as
        /classify classifies audio; all rows' windows are one batcher request. Returns
        ``probabilities`` [B, C] (per clip: ``windowing.aggregate`` over its overlapping
        windows, as /classify) and ``frame_scores`` [B, T] (T = 1 + N' // hop_length, N'
        samples at the model's rate)."""
        deadline = self._deadline()
        features = await self.offload(self._waveform_features, model, waves, sample_rate,
                                      deadline=deadline)
        return clip_outputs(await self._run(model, features, deadline, self._hop(model)))

    def _hop(self, model: ServedModel) -> int:
        """Frames between /classify window starts (``window_hop_fraction`` of a window)."""
        return W.hop_frames(model.manifest.compressor.in_t_dim, self.settings.window_hop_fraction)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s

    def _max_frames(self, model: ServedModel) -> int:
        return int(self.settings.max_audio_seconds / model.manifest.frontend.frame_hop_seconds) + 1

    async def _prepare(self, model: ServedModel, payload: Payload, hop: int) -> Prepared:
        deadline = self._deadline()
        features, duration = await self.offload(self._features, model, payload,
                                                deadline=deadline)
        (prepared,) = await self._run(model, [(features, duration)], deadline, hop)
        return prepared

    async def _run(self, model: ServedModel, inputs: list[tuple[np.ndarray, float]],
                   deadline: float, hop: int) -> list[Prepared]:
        """Window every ([T, F], duration) of ``inputs`` (a window every ``hop`` frames),
        submit all the windows as one request to the batcher (one admission) and give each
        input its results."""
        size = model.manifest.compressor.in_t_dim
        split = [W.split_windows(features, size, model.pad_value, hop)
                 for features, _ in inputs]
        windows = split[0][0] if len(split) == 1 else np.concatenate([w for w, _ in split])
        results = await model.batcher.submit(windows, deadline)
        if len(results) != len(windows):
            raise InferenceFailed(f"{len(results)} results for {len(windows)} windows")
        prepared, start = [], 0
        for (features, duration), (w, valid) in zip(inputs, split, strict=True):
            p = Prepared(model, features, duration, w, valid, W.window_starts(
                features.shape[0], size, hop), results[start:start + len(w)])
            start += len(w)
            self._count(p)
            prepared.append(p)
        return prepared

    def _features(self, model: ServedModel, payload: Payload) -> tuple[np.ndarray, float]:
        """[T, F] log-mel and the input's duration in seconds (runs on the thread pool)."""
        f = model.manifest.frontend
        if payload.kind == "audio":
            wave = decode_audio(payload.data, f.sample_rate, self.settings.max_audio_seconds)
            return self._log_mel(model, wave), len(wave) / f.sample_rate
        parse = spectrogram_from_json if payload.kind == "json" else spectrogram_from_npy
        max_frames = self._max_frames(model)
        spec = validate_spectrogram(parse(payload.data, max_frames * f.n_mels), f.n_mels,
                                    max_frames, f.value_range)
        return spec, spec.shape[0] * f.frame_hop_seconds

    def _waveform_features(self, model: ServedModel, waves: np.ndarray,
                           sample_rate: int) -> list[tuple[np.ndarray, float]]:
        """[B, N] clips -> ([T, F] log-mel, seconds) per row (runs on the thread pool)."""
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
            features.append((self._log_mel(model, wave), len(wave) / f.sample_rate))
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
        self.metrics.output_frames.labels(name).inc(_output_frames(p))


def _kept(p: Prepared) -> list[int]:
    out_len = p.model.manifest.compressor.out_t_dim
    return [W.kept_steps(r[FRAME_SCORES], int(v), out_len)
            for r, v in zip(p.results, p.valid, strict=True)]


def _output_frames(p: Prepared) -> int:
    """Output steps the input was compressed to, each frame counted once: back to back, the
    windows' kept steps; overlapping, ceil of the sum of the clip's frame scores (a frame's
    score is its share of an output step), so out/in stays the compression ratio."""
    size = p.model.manifest.compressor.in_t_dim
    if len(p.starts) < 2 or p.starts[1] - p.starts[0] == size:
        return sum(_kept(p))
    return max(1, math.ceil(float(np.sum(p.frame_scores, dtype=np.float64)) - 1e-4))


def _common(p: Prepared) -> dict:
    return {"model": p.model.name, "version": p.model.version,
            "frame_hop_seconds": p.model.manifest.frontend.frame_hop_seconds,
            "duration_seconds": p.duration_s, "input_frames": p.features.shape[0],
            "frame_scores": p.frame_scores}


def _window_probs(p: Prepared) -> np.ndarray:
    return np.stack([r[PROBABILITIES] for r in p.results]).astype(np.float64)


def classify_result(p: Prepared, top_k: int, threshold: float) -> dict:
    """Clip probabilities: ``windowing.aggregate`` of the windows' probabilities (keywords:
    max; background: least background window); ``detections`` over ``threshold``."""
    labels = p.model.manifest.labels
    probs = _window_probs(p)
    clip = W.aggregate(probs, labels)
    hop = p.model.manifest.frontend.frame_hop_seconds
    size = p.model.manifest.compressor.in_t_dim
    windows = [{"start_seconds": start, "end_seconds": end,
                "probabilities": dict(zip(labels, map(float, row), strict=True))}
               for (start, end), row in zip(W.window_times(p.valid, size, hop, p.starts),
                                            probs, strict=True)]
    return _common(p) | {"labels": labels,
                         "probabilities": dict(zip(labels, map(float, clip), strict=True)),
                         "top": W.top_k(clip, labels, min(top_k, len(labels))),
                         "detections": W.detections(probs, labels, p.starts, p.valid, hop,
                                                    threshold),
                         "windows": windows}


def clip_outputs(prepared: list[Prepared]) -> dict[str, np.ndarray]:
    """Clips of one length -> probabilities [B, C] (each ``windowing.aggregate`` over its
    windows, as in classify_result) and frame_scores [B, T] (padding left out)."""
    probs = [W.aggregate(_window_probs(p), p.model.manifest.labels) for p in prepared]
    return {"probabilities": np.stack(probs).astype(np.float32),
            "frame_scores": np.stack([p.frame_scores for p in prepared])}


def compress_result(p: Prepared) -> dict:
    """Per window (back to back, never overlapping: each frame's maps appear once): the
    compressed maps without steps made only of padding, activeness."""
    hop = p.model.manifest.frontend.frame_hop_seconds
    size = p.model.manifest.compressor.in_t_dim
    windows = []
    for r, v, kept, (start, end) in zip(p.results, p.valid, _kept(p),
                                        W.window_times(p.valid, size, hop, p.starts),
                                        strict=True):
        windows.append({"start_seconds": start, "end_seconds": end, "input_frames": int(v),
                        "output_frames": kept,
                        "activeness": W.activeness(r[FRAME_SCORES], int(v)),
                        "avgpool": r["avgpool"][:kept], "maxpool": r["maxpool"][:kept],
                        "resolution_enc": r["resolution_enc"][:kept]})
    return _common(p) | {"output_frames": sum(w["output_frames"] for w in windows),
                         "activeness": [w["activeness"] for w in windows],
                         "windows": windows}
