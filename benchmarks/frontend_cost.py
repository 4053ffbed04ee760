"""CPU per clip of a model's front end: its exported ``frontend.onnx`` (ONNX Runtime, one
thread) against the numpy FFT the server uses for a LogMel model
(``serving/runtime/native_frontend.py``), side by side in one run.

    .venv/bin/python benchmarks/frontend_cost.py [--model-dir model_store/kws12-diffres/3]
        [--seconds 1 10] [--calls 300] [--rounds 5]

Per clip length: both run ``--calls`` times per round on the same clip (speech-like: a
modulated tone in noise), alternating which goes first, for ``--rounds`` rounds; the figure
is the median over rounds of thread CPU time per call (``time.thread_time``, so other
processes on a shared machine do not count). Prints a markdown table with the ratio and the
largest difference between the two outputs.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.manifest import BACKENDS, FRONTEND_OUTPUT, WAVEFORM, Manifest  # noqa: E402
from service.serving.runtime.backend_registry import make_backend  # noqa: E402
from service.serving.runtime.native_frontend import native_frontend  # noqa: E402


def clip(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 3 * t)
    wave += 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return wave.astype(np.float32)[np.newaxis]


def cpu_ms_per_call(run, x: np.ndarray, calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        run(x)
    return 1000 * (time.thread_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "model_store/kws12-diffres/3")
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    manifest = Manifest.read(args.model_dir)
    f = manifest.frontend
    native = native_frontend(f, FRONTEND_OUTPUT)
    if native is None:
        raise SystemExit(f"{args.model_dir}: front end {f.type!r} has no numpy version")
    files = BACKENDS["onnx"]
    exported = make_backend("onnx", args.model_dir / files.frontend, WAVEFORM, None,
                            ["CPUExecutionProvider"], 1,
                            sha256=manifest.artifacts[files.frontend].sha256)
    exported.load("cpu")
    print(f"{manifest.name}/{manifest.version}: {f.type} front end, {f.sample_rate} Hz, "
          f"hop {f.hop_length}, {f.n_mels} mels; {args.rounds} rounds of {args.calls} calls\n")
    print("| clip | frontend.onnx CPU ms | numpy CPU ms | onnx / numpy | max abs difference |")
    print("|---|---:|---:|---:|---:|")
    for seconds in args.seconds:
        x = clip(seconds, f.sample_rate)
        a = next(iter(exported.run(x).values()))
        b = next(iter(native.run(x).values()))
        times: dict[str, list[float]] = {"onnx": [], "numpy": []}
        runners = [("onnx", exported.run), ("numpy", native.run)]
        for r in range(args.rounds):
            for name, run in runners if r % 2 == 0 else runners[::-1]:
                cpu_ms_per_call(run, x, 10)  # warm
                times[name].append(cpu_ms_per_call(run, x, args.calls))
        onnx_ms, numpy_ms = statistics.median(times["onnx"]), statistics.median(times["numpy"])
        print(f"| {seconds:g} s | {onnx_ms:.3f} | {numpy_ms:.3f} | {onnx_ms / numpy_ms:.2f}x | "
              f"{float(np.abs(a - b).max()):.1e} |")


if __name__ == "__main__":
    main()
