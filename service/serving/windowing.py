"""Pure array work of the data plane: cut [T, F] into model windows, put the answers back.

A long input is split into windows of ``size`` frames; the last is padded with the front
end's output for digital silence (the manifest's ``frontend.silence``, per band). Padding
never reaches a result: frame scores are cut back to T, and the compressed maps of a padded
window keep only the output steps that hold a real frame (see ``kept_steps``).
"""

import math

import numpy as np


def split_windows(features: np.ndarray, size: int, pad_value: float | np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """[T, F] -> (windows [n, size, F], valid [n] real frames per window), n = ceil(T/size);
    ``pad_value`` is one value or one per band [F]."""
    frames, bins = features.shape
    n = max(1, math.ceil(frames / size))
    padded = np.full((n * size, bins), pad_value, dtype=np.float32)
    padded[:frames] = features
    valid = np.minimum(size, frames - np.arange(n) * size)
    return padded.reshape(n, size, bins), valid


def kept_steps(scores: np.ndarray, valid: int, out_len: int) -> int:
    """Output steps of a window that hold at least one real frame.

    Frame i of a window lands in step ceil(cumsum(scores)[i]) - 1 (scores sum to out_len), so
    the real frames fill steps 0 .. ceil(sum(scores[:valid])) - 1. A full window keeps all.
    """
    if valid >= len(scores):
        return out_len
    covered = float(np.sum(scores[:valid], dtype=np.float64))
    return int(min(out_len, max(1, math.ceil(covered - 1e-4))))


def activeness(scores: np.ndarray, valid: int) -> float:
    """Sample standard deviation (ddof=1) of a window's real frame scores; 0 for one frame."""
    real = scores[:valid].astype(np.float64)
    return float(real.std(ddof=1)) if len(real) > 1 else 0.0


def window_times(valid: np.ndarray, size: int, hop_s: float) -> list[tuple[float, float]]:
    """(start_seconds, end_seconds) of each window's real frames."""
    return [(i * size * hop_s, (i * size + int(v)) * hop_s) for i, v in enumerate(valid)]


def frame_scores(per_window: list[np.ndarray], frames: int) -> np.ndarray:
    """Concatenate windows' [size] scores and drop the padding: [T]."""
    return np.concatenate(per_window)[:frames]


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i], "probability": float(probabilities[i])} for i in order]
