"""Pure array work of the data plane: cut [T, F] into model windows, put the answers back.

A long input is split into windows of ``size`` frames that start every ``hop`` frames
(/classify: overlapping, ``hop`` = ``hop_frames(size, window_hop_fraction)``; /compress and
KServe spectrogram windows: back to back, ``hop`` = ``size``). Only the last window may be
padded, with the front end's output for digital silence (the manifest's ``frontend.silence``,
per band). Padding never reaches a result: frame scores are cut back to T, and the compressed
maps of a padded window keep only the output steps that hold a real frame (see
``kept_steps``).

Clip level (/classify and KServe waveforms): ``aggregate`` (keywords: max over windows;
background classes: their least background window), ``detections`` (keyword windows over a
threshold, merged per label), ``frame_scores`` (each frame from the window where it is most
central).
"""

import math

import numpy as np

from service.manifest import BACKGROUND_LABELS


def hop_frames(size: int, fraction: float = 0.5) -> int:
    """Window hop in frames for ``fraction`` of a window of ``size`` frames: floor, at least 1
    (the default, half a window, is 50 frames for 101)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"hop fraction must be in (0, 1], got {fraction}")
    return max(1, int(size * fraction))


def window_starts(frames: int, size: int, hop: int) -> np.ndarray:
    """First frame of each window: 0, hop, 2·hop, ... until a window reaches frame T - 1.
    n = 1 + ceil(max(0, T - size) / hop); one window when T <= size."""
    if hop < 1 or hop > size:
        raise ValueError(f"hop must be in [1, {size}], got {hop}")
    n = 1 + math.ceil(max(0, frames - size) / hop)
    return np.arange(n, dtype=np.int64) * hop


def split_windows(features: np.ndarray, size: int, pad_value: float | np.ndarray,
                  hop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[T, F] -> (windows [n, size, F], valid [n] real frames per window); windows start
    every ``hop`` frames (default ``size``: back to back, n = ceil(T/size)), see
    ``window_starts``. Only the last window is padded; ``pad_value`` is one value or one per
    band [F]."""
    frames, bins = features.shape
    hop = size if hop is None else hop
    starts = window_starts(frames, size, hop)
    padded = np.full((int(starts[-1]) + size, bins), pad_value, dtype=np.float32)
    padded[:frames] = features
    if hop == size:
        windows = padded.reshape(len(starts), size, bins)
    else:
        windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=0)[::hop]
        windows = np.ascontiguousarray(windows.transpose(0, 2, 1))
    valid = np.minimum(size, frames - starts)
    return windows, valid


# Float32 frame scores summing to a whole number of steps land a hair above it; a cumulative
# score within this of an integer counts as that integer (step boundaries, kept steps, output
# frames; the web page's app.js repeats it).
STEP_TOLERANCE = 1e-4


def step_of_frames(scores: np.ndarray, steps: int) -> np.ndarray:
    """Output step of each frame of one window: ceil(cumsum(scores)[i]) - 1, in [0, steps)."""
    cum = np.cumsum(np.asarray(scores, np.float64))
    return np.clip(np.ceil(cum - STEP_TOLERANCE).astype(np.int64) - 1, 0, max(0, steps - 1))


def kept_steps(scores: np.ndarray, valid: int, out_len: int) -> int:
    """Output steps of a window that hold at least one real frame.

    Frame i of a window lands in step ceil(cumsum(scores)[i]) - 1 (scores sum to out_len), so
    the real frames fill steps 0 .. ceil(sum(scores[:valid])) - 1. A full window keeps all.
    """
    if valid >= len(scores):
        return out_len
    covered = float(np.sum(scores[:valid], dtype=np.float64))
    return int(min(out_len, max(1, math.ceil(covered - STEP_TOLERANCE))))


def activeness(scores: np.ndarray, valid: int) -> float:
    """Sample standard deviation (ddof=1) of a window's real frame scores; 0 for one frame."""
    real = scores[:valid].astype(np.float64)
    return float(real.std(ddof=1)) if len(real) > 1 else 0.0


def seconds(frame: int, hop_s: float) -> float:
    """Frame index -> seconds, on the frame grid (float noise of frame · hop rounded off)."""
    return round(int(frame) * hop_s, 9)


def window_times(valid: np.ndarray, size: int, hop_s: float,
                 starts: np.ndarray | None = None) -> list[tuple[float, float]]:
    """(start_seconds, end_seconds) of each window's real frames; ``starts`` in frames
    (default: back to back, i · size)."""
    if starts is None:
        starts = np.arange(len(valid)) * size
    return [(seconds(s, hop_s), seconds(s + v, hop_s)) for s, v in zip(starts, valid,
                                                                       strict=True)]


def frame_scores(per_window: list[np.ndarray], frames: int,
                 starts: np.ndarray | None = None) -> np.ndarray:
    """One score per input frame, [T]. Back to back (``starts`` None or i · size): the
    windows' [size] scores concatenated, padding dropped. Overlapping: frame t takes its
    score from the window whose centre (start + size/2) is nearest to t + 1/2, the window in
    which it is most central; a tie goes to the earlier window."""
    if not per_window:
        return np.zeros(0, np.float32)
    size = len(per_window[0])
    if starts is None or np.array_equal(starts, np.arange(len(per_window)) * size):
        return np.concatenate(per_window)[:frames]
    starts = np.asarray(starts, np.int64)
    centres = starts + size / 2
    t = np.arange(frames) + 0.5
    right = np.clip(np.searchsorted(centres, t), 0, len(starts) - 1)
    left = np.maximum(right - 1, 0)
    pick = np.where(np.abs(t - centres[left]) <= np.abs(centres[right] - t), left, right)
    offset = np.arange(frames) - starts[pick]
    if np.any(offset < 0) or np.any(offset >= size):
        raise ValueError("windows do not cover every frame")
    return np.stack(per_window)[pick, offset]


def background_mask(labels: list[str]) -> np.ndarray:
    return np.array([label in BACKGROUND_LABELS for label in labels], dtype=bool)


def aggregate(probs: np.ndarray, labels: list[str]) -> np.ndarray:
    """Clip probabilities [C] from window probabilities [n, C], so that a keyword spoken in
    one window is not diluted by the others:

    * keyword class: its max over windows (present if present in any window);
    * background classes (``BACKGROUND_LABELS`` in ``labels``) together: the clip is as much
      background as its least background window, min over windows of their summed
      probability; that mass is shared among them in proportion to their mean over windows;
    * then renormalised to sum 1.

    One window: its own probabilities. No background labels: the per-class max,
    renormalised."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels) or len(probs) == 0:
        raise ValueError(f"probabilities must be [n >= 1, {len(labels)}], got "
                         f"{list(probs.shape)}")
    clip = probs.max(axis=0)
    background = background_mask(labels)
    if background.any():
        mass = probs[:, background].sum(axis=1).min()
        share = probs[:, background].mean(axis=0)
        total = share.sum()
        clip[background] = mass * share / total if total > 0 else mass / background.sum()
    total = clip.sum()
    return clip / total if total > 0 else np.full(len(labels), 1 / len(labels))


def detections(probs: np.ndarray, labels: list[str], starts: np.ndarray, valid: np.ndarray,
               hop_s: float, threshold: float) -> list[dict]:
    """Keyword (non-background) classes whose window probability is >= ``threshold``:
    ``{label, probability, start, end}`` (seconds, on the frame grid: window start frame and
    last real frame + 1, times the frame hop). Windows of one label that overlap or touch
    (next start frame <= current end frame) merge into one detection spanning them all,
    with their max probability. Sorted by start, then label order."""
    probs = np.asarray(probs, np.float64)
    background = background_mask(labels)
    found = []
    for c in np.flatnonzero(~background):
        current = None  # [start frame, end frame, probability]
        for i in np.flatnonzero(probs[:, c] >= threshold):
            start, end, p = int(starts[i]), int(starts[i] + valid[i]), float(probs[i, c])
            if current is not None and start <= current[1]:
                current[1], current[2] = max(current[1], end), max(current[2], p)
                continue
            if current is not None:
                found.append((current, c))
            current = [start, end, p]
        if current is not None:
            found.append((current, c))
    found.sort(key=lambda item: (item[0][0], item[1]))
    return [{"label": labels[c], "probability": p, "start": seconds(s, hop_s),
             "end": seconds(e, hop_s)} for (s, e, p), c in found]


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i], "probability": float(probabilities[i])} for i in order]
