"""``python -m service predict --model DIR FILE...``: classify audio files offline, no server.

Reads any libsndfile format at any rate and channel count (mixed to mono, resampled with
soxr), runs the model directory's own exported front end and classifier (ONNX Runtime by
default, so no torch), and prints one JSON line per file:
``{"file", "label", "probability", "top": [{"label", "probability"}], "windows",
"detections"}``. Windows and the clip's probabilities follow ``/classify``: overlapping
windows (a window every half window by default), each keyword's max over them, the
background classes their least background window (``windowing.aggregate``), and
``detections`` of keyword windows at or over ``--threshold`` (docs/API.md).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

from service.errors import DiffresError
from service.manifest import BACKENDS, Manifest, verify_artifacts
from service.serving.dataplane import windowing as W
from service.serving.dataplane.audio_decode import decode_audio
from service.serving.runtime.backend_registry import make_backend


class Predictor:
    """A model directory loaded for offline use: front end and classifier on one device."""

    def __init__(self, directory: Path, backend: str = "onnx", device: str = "cpu") -> None:
        self.manifest = Manifest.read(directory)
        problems = verify_artifacts(directory, self.manifest)
        if problems:
            raise ValueError(f"{directory}: " + "; ".join(problems))
        frontend_file, model_file = BACKENDS[backend].frontend, BACKENDS[backend].model
        self.frontend = self._load(directory, frontend_file, backend, device,
                                   self.manifest.frontend_inputs)
        self.model = self._load(directory, model_file, backend, device, self.manifest.inputs)

    def _load(self, directory: Path, name: str, backend: str, device: str, inputs: list):
        artifact = self.manifest.artifacts[name]
        runner = make_backend(backend, directory / name, inputs[0].name if inputs else "",
                              None, ["CUDAExecutionProvider", "CPUExecutionProvider"], 0,
                              sha256=artifact.sha256)
        runner.load(device)
        return runner

    def classify(self, wave: np.ndarray, hop_fraction: float = 0.5, threshold: float = 0.5,
                 batch_size: int = 32) -> dict:
        """[N] mono samples at the model's rate -> the clip's probabilities (``/classify``'s
        rule), its detections and its number of windows."""
        m = self.manifest
        size, labels = m.compressor.in_t_dim, m.labels
        mel = next(iter(self.frontend.run(wave[np.newaxis].astype(np.float32)).values()))[0]
        hop = W.hop_frames(size, hop_fraction)
        windows, valid = W.split_windows(mel, size, np.asarray(m.frontend.silence, np.float32),
                                         hop)
        probs = np.concatenate([self.model.run(windows[i:i + batch_size])["probabilities"]
                                for i in range(0, len(windows), batch_size)]).astype(np.float64)
        starts = W.window_starts(mel.shape[0], size, hop)
        return {"probabilities": W.aggregate(probs, labels), "windows": len(windows),
                "detections": W.detections(probs, labels, starts, valid,
                                           m.frontend.frame_hop_seconds, threshold)}


def predict_file(predictor: Predictor, path: Path, top: int, max_seconds: float,
                 hop_fraction: float = 0.5, threshold: float = 0.5) -> dict:
    labels = predictor.manifest.labels
    wave = decode_audio(path.read_bytes(), predictor.manifest.frontend.sample_rate, max_seconds)
    result = predictor.classify(wave, hop_fraction, threshold)
    ranked = W.top_k(result["probabilities"], labels, top)
    return {"file": str(path), "label": ranked[0]["label"],
            "probability": ranked[0]["probability"], "top": ranked,
            "windows": result["windows"], "detections": result["detections"]}


def run(args: argparse.Namespace) -> int:
    try:
        predictor = Predictor(Path(args.model), args.backend, args.device)
    except (OSError, ValueError) as exc:
        print(f"error: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for name in args.files:
        try:
            line = predict_file(predictor, Path(name), args.top_k, args.max_seconds,
                                args.hop_fraction, args.threshold)
        except (OSError, DiffresError) as exc:
            failed += 1
            line = {"file": name, "error": str(exc)}
        sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
        sys.stdout.flush()
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="classify audio files offline",
                                   description=__doc__)
    parser.add_argument("--model", required=True,
                        help="a model version directory, e.g. model_store/kws12-diffres/1")
    parser.add_argument("files", nargs="+", help="audio files (any libsndfile format)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="onnx")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--hop-fraction", type=float, default=0.5,
                        help="a window every this fraction of a window, as the server's "
                             "window_hop_fraction (default 0.5)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="a keyword window at or above this probability is a detection, "
                             "as the server's detection_threshold (default 0.5)")
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="refuse longer files (default one hour)")
    parser.set_defaults(func=run)
