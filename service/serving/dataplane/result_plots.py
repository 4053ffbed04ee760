"""POST /visualize, pure: a request's /classify (and, for a DiffRes model, /compress)
results -> one PNG of four panels, rendered with matplotlib's Agg backend (no display, safe
on worker threads: every call builds its own ``Figure``, pyplot is never used).

1. the log-mel spectrogram [T, F];
2. the importance score of every input frame (``frame_scores``);
3. the compressed spectrogram on its learnt time axis: each output step drawn over the span
   of input frames it merged (frame i of a window lands in step ceil(cumsum(scores)[i]) - 1,
   ``windowing.step_of_frames``), step boundaries marked. A model without compression outputs
   has uniform spans: one step per frame for the full-resolution kind, else
   in_t_dim / out_t_dim frames per step (the span's mean is drawn);
4. the top classes as bars, or for audio longer than one model window the detections over
   time.

Colours: viridis for the maps, Okabe-Ito blue/vermillion for lines and bars (colour-blind
safe); every time axis in seconds.
"""

import io

import numpy as np

from service.serving.dataplane import windowing as W
from service.serving.dataplane.results import Prepared, classify_result, compress_result

PNG = "image/png"
BLUE, VERMILLION = "#0072B2", "#D55E00"  # Okabe-Ito
CMAP = "viridis"
MAX_BOUNDARIES = 400  # above this many output steps, boundaries are not drawn one by one


def visualization(classified: Prepared, compressed: Prepared | None, top_k: int,
                  threshold: float) -> bytes:
    """The PNG for one request: ``classified`` as /classify prepares it (overlapping
    windows), ``compressed`` as /compress does (back to back; None for a model without
    compression outputs)."""
    c = classified.model.manifest.compressor
    return render_png(classified.features, classify_result(classified, top_k, threshold),
                      compress_result(compressed) if compressed is not None else None,
                      kind=c.kind, in_t_dim=c.in_t_dim, out_t_dim=c.out_t_dim)


def compressed_view(features: np.ndarray, compress: dict | None, kind: str, in_t_dim: int,
                    out_t_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """([T, F] image where each frame shows the output step it belongs to, step index [T]
    (global, increasing))."""
    frames = features.shape[0]
    if compress is not None:
        scores = np.asarray(compress["frame_scores"], np.float64)
        image = np.empty_like(features, dtype=np.float32)
        step = np.empty(frames, np.int64)
        start, offset = 0, 0
        for w in compress["windows"]:
            valid, kept = int(w["input_frames"]), int(w["output_frames"])
            local = W.step_of_frames(scores[start:start + valid], kept)
            avgpool = np.asarray(w["avgpool"], np.float32)
            image[start:start + valid] = avgpool[local]
            step[start:start + valid] = offset + local
            start, offset = start + valid, offset + kept
        return image, step
    per_step = 1.0 if kind == "full" else in_t_dim / max(1, out_t_dim)
    step = np.floor(np.arange(frames) / per_step).astype(np.int64)
    if per_step == 1.0:
        return features.astype(np.float32), step
    image = np.empty_like(features, dtype=np.float32)
    for s in np.unique(step):
        image[step == s] = features[step == s].mean(axis=0)
    return image, step


def _map(ax, image: np.ndarray, hop: float, title: str, fig) -> None:
    frames = image.shape[0]
    shown = ax.imshow(image.T, origin="lower", aspect="auto", cmap=CMAP, interpolation="nearest",
                      extent=(0.0, frames * hop, 0, image.shape[1]))
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel("mel band")
    fig.colorbar(shown, ax=ax, pad=0.01, label="log mel power")


def render_png(features: np.ndarray, classify: dict, compress: dict | None, *, kind: str,
               in_t_dim: int, out_t_dim: int, dpi: int = 100) -> bytes:
    """Four panels (see the module docstring) as PNG bytes, 1000 x 1100 px at ``dpi`` 100."""
    from matplotlib.figure import Figure  # here: the server starts without importing it

    features = np.asarray(features, np.float32)
    hop = float(classify["frame_hop_seconds"])
    frames = features.shape[0]
    duration = frames * hop
    fig = Figure(figsize=(10, 11), dpi=dpi, layout="constrained")
    axes = fig.subplots(4, 1, gridspec_kw={"height_ratios": [3, 2, 3, 3]})
    fig.suptitle(f"{classify['model']} v{classify['version']}: "
                 f"{classify['duration_seconds']:.2f} s, {frames} frames", fontsize=12)

    _map(axes[0], features, hop, "Log-mel spectrogram (input)", fig)

    ax = axes[1]
    scores = np.asarray(classify["frame_scores"], np.float64)
    times = (np.arange(len(scores)) + 0.5) * hop
    ax.plot(times, scores, color=BLUE, linewidth=1.2)
    ax.fill_between(times, scores, color=BLUE, alpha=0.2)
    ax.set_xlim(0, duration)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("score")
    ax.set_title("DiffRes importance score per input frame" if compress is not None else
                 f"Frame score (compressor {kind!r}: uniform)", fontsize=10, loc="left")
    ax.grid(alpha=0.3)

    image, step = compressed_view(features, compress, kind, in_t_dim, out_t_dim)
    steps = int(step[-1]) + 1 if len(step) else 0
    if compress is not None:
        title = (f"Compressed (avgpool) on its learnt time axis: {steps} steps for {frames} "
                 "frames; each step spans the frames it merged")
    elif kind == "full":
        title = f"Fixed resolution ({kind!r}): uniform spans, one step per frame"
    else:
        title = (f"Fixed resolution ({kind!r}): uniform spans of {in_t_dim / out_t_dim:.2g} "
                 "frames (span mean)")
    _map(axes[2], image, hop, title, fig)
    if 1 < steps <= MAX_BOUNDARIES:
        edges = (np.flatnonzero(np.diff(step)) + 1) * hop
        axes[2].vlines(edges, 0, image.shape[1], colors="white", linewidths=0.5, alpha=0.6)

    ax = axes[3]
    windows = classify.get("windows", [])
    if len(windows) > 1:
        _detections(ax, classify, duration)
    else:
        top = classify["top"]
        labels = [t["label"] for t in top][::-1]
        probs = [t["probability"] for t in top][::-1]
        ax.barh(labels, probs, color=BLUE)
        for y, p in enumerate(probs):
            ax.text(min(p + 0.01, 0.9), y, f"{p:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability")
        ax.set_title("Top classes", fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[:3]:
        ax.set_xlim(0, duration)
        ax.set_xlabel("time (s)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _detections(ax, classify: dict, duration: float) -> None:
    detections = classify.get("detections", [])
    labels = list(dict.fromkeys([d["label"] for d in detections]
                                + [t["label"] for t in classify["top"][:3]]))
    rows = {label: i for i, label in enumerate(labels)}
    for d in detections:
        ax.broken_barh([(d["start"], d["end"] - d["start"])], (rows[d["label"]] - 0.4, 0.8),
                       facecolors=VERMILLION, alpha=0.35 + 0.65 * float(d["probability"]))
        ax.text(d["start"], rows[d["label"]], f" {d['probability']:.2f}", va="center",
                fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.6, max(0.6, len(labels) - 0.4))
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    title = (f"Detections over time ({len(detections)})" if detections else
             "Detections over time: none over the threshold")
    if not detections:
        ax.text(duration / 2, 0, "no detection", ha="center", va="center", color="0.4")
    ax.set_title(title, fontsize=10, loc="left")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
