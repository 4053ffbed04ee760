"""Result assembly, pure: a request's windows and their model outputs (``Prepared``) ->
the /classify, /compress and v2 result dicts, and the /compress .npz archive."""

import functools
import io
import math
from dataclasses import dataclass

import numpy as np

from service.manifest import COMPRESSION_OUTPUTS, FRAME_SCORES, PROBABILITIES
from service.serving.dataplane import windowing as W
from service.serving.runtime.model_repository import ServedModel

NPZ = "application/x-npz"


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


def _kept(p: Prepared) -> list[int]:
    out_len = p.model.manifest.compressor.out_t_dim
    return [W.kept_steps(r[FRAME_SCORES], int(v), out_len)
            for r, v in zip(p.results, p.valid, strict=True)]


def output_frames(p: Prepared) -> int:
    """Output steps the input was compressed to, each frame counted once: back to back, the
    windows' kept steps; overlapping, ceil of the sum of the clip's frame scores (a frame's
    score is its share of an output step), so out/in stays the compression ratio."""
    size = p.model.manifest.compressor.in_t_dim
    if len(p.starts) < 2 or p.starts[1] - p.starts[0] == size:
        return sum(_kept(p))
    return max(1, math.ceil(float(np.sum(p.frame_scores, dtype=np.float64))
                            - W.STEP_TOLERANCE))


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


def compress_npz(result: dict) -> bytes:
    """The /compress result as an .npz: per-window maps concatenated along time
    (split them with ``window_output_frames``), plus per-window times and activeness."""
    windows = result["windows"]
    arrays: dict[str, np.ndarray] = {
        "frame_scores": np.asarray(result["frame_scores"], np.float32),
        "activeness": np.asarray(result["activeness"], np.float32),
        "window_start_seconds": np.asarray([w["start_seconds"] for w in windows]),
        "window_end_seconds": np.asarray([w["end_seconds"] for w in windows]),
        "window_input_frames": np.asarray([w["input_frames"] for w in windows], np.int64),
        "window_output_frames": np.asarray([w["output_frames"] for w in windows], np.int64),
        "input_frames": np.asarray(result["input_frames"], np.int64),
        "output_frames": np.asarray(result["output_frames"], np.int64),
        "frame_hop_seconds": np.asarray(result["frame_hop_seconds"]),
    }
    for key in COMPRESSION_OUTPUTS:
        arrays[key] = np.concatenate([w[key] for w in windows]).astype(np.float32, copy=False)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
