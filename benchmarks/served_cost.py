"""What DiffRes buys through the server: ``POST /classify`` throughput of a BC-ResNet model at
full resolution against DiffRes at rates 0.5 and 0.75, side by side, on one server.

    python benchmarks/served_cost.py [--seconds 8] [--rounds 3] [--clients 64]
                                     [--max-batch-size 32] [--processes 1] [--windows 1]

Steps, all in one run so the ratios compare like with like on a shared machine:
1. build the three models (``AudioClassifier.build(kind, 101, 40, rate, 12,
   classifier="bcresnet")``, random weights with a fixed seed: the cost does not depend on
   them) and export each, ONNX only, with a 16 kHz 40-mel ``LogMel`` front end, to a
   temporary model store as ``bcres-full``, ``bcres-diffres-050`` and ``bcres-diffres-075``;
2. start ONE server on that store (version policy latest, ``--max-batch-size``,
   ``--processes``, the server's default threads) and, after a short warm-up per model, drive
   ``POST /classify?model=NAME`` with an ``.npy`` body of float32 log-mel noise holding
   ``--windows`` model windows (1: 101 x 40; N: the frames the server cuts into N
   overlapping windows at its default hop, half a window) with wrk, ``--clients``
   connections, closed loop, ``--seconds`` per model, over ``--rounds`` rounds whose model
   order rotates so every model runs in every position;
3. print the median req/s (and windows/s) and p50/p99 latency per model and the ratios
   DiffRes / full (issue #13's goal: >= 1.6x at rate 0.5, >= 2.5x at 0.75, on CPU at batch
   32). Each request also pays HTTP, parsing and batching work that does not depend on the
   model; the more windows a request carries, the smaller that fixed cost's share.
The load generator is wrk (``apt-get install wrk``); it only targets 127.0.0.1.
"""

import argparse
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.server import LocalServer  # noqa: E402
from load_tests.wrk import drive, require_wrk  # noqa: E402
from service.config import Settings  # noqa: E402
from service.export import export_model_dir  # noqa: E402
from service.frontend import LogMel  # noqa: E402
from service.pipeline import AudioClassifier  # noqa: E402
from service.serving.dataplane.windowing import hop_frames, window_starts  # noqa: E402

T, F = 101, 40  # 1 s at a 10 ms hop, 40 mels
LABELS = [f"class_{i}" for i in range(12)]
MODELS = (("bcres-full", "full", 0.0), ("bcres-diffres-050", "diffres", 0.5),
          ("bcres-diffres-075", "diffres", 0.75))
GOALS = {"bcres-diffres-050": 1.6, "bcres-diffres-075": 2.5}

def build_store(store: Path, seed: int) -> None:
    """Export the three models (random weights, ``seed``) as version 1 under ``store``."""
    for name, kind, rate in MODELS:
        torch.manual_seed(seed)
        model = AudioClassifier.build(kind, T, F, rate, len(LABELS),
                                      classifier="bcresnet").eval()
        export_model_dir(model.compressor, model.classifier, LogMel(), store / name / "1",
                         name, 1, LABELS, formats=["onnx"])


def frames_for(windows: int) -> int:
    """Frames of a spectrogram the server cuts into ``windows`` windows of T frames at its
    default hop."""
    hop = hop_frames(T, Settings.model_fields["window_hop_fraction"].default)
    frames = T + (windows - 1) * hop
    assert len(window_starts(frames, T, hop)) == windows
    return frames


def window_body(windows: int = 1, seed: int = 0) -> bytes:
    """``windows`` model windows of log-mel noise as an .npy body."""
    spec = np.random.default_rng(seed).normal(-6.0, 2.0, (frames_for(windows), F)
                                              ).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, spec, allow_pickle=False)
    return buf.getvalue()


def check(url: str, model: str, body: bytes) -> None:
    """One request, to fail early (with the server's answer) rather than measure errors."""
    request = urllib.request.Request(f"{url}/classify?model={model}", data=body, method="POST",
                                     headers={"Content-Type": "application/x-npy"})
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status != 200:
            raise SystemExit(f"{model}: HTTP {response.status}: {response.read()[:500]!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=None, help="connections (default 64 "
                        "for one window, fewer for more, so the server's window queue of 512 "
                        "never refuses: min(64, 256 // windows), at least 2)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="seconds per model, first")
    parser.add_argument("--processes", type=int, default=1, help="serving processes "
                        "(DIFFRES_PROCESSES)")
    parser.add_argument("--windows", type=int, default=1, help="model windows per request "
                        "(a longer spectrogram, cut into overlapping windows)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.windows < 1:
        parser.error("--windows must be >= 1")
    if args.clients is None:
        args.clients = max(2, min(64, 256 // args.windows))
    require_wrk()  # before the export, not after

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/served_cost.py",
                                                 *(sys.argv[1:] if argv is None else argv)])
    names = [name for name, _, _ in MODELS]
    with tempfile.TemporaryDirectory(prefix="diffres-served-cost-") as tmp:
        tmp = Path(tmp)
        store = tmp / "store"
        start = time.perf_counter()
        build_store(store, args.seed)
        print(f"exported {', '.join(names)} (ONNX, seed {args.seed}) in "
              f"{time.perf_counter() - start:.0f} s")
        body = window_body(args.windows)
        body_file = tmp / "window.npy"
        body_file.write_bytes(body)
        server = LocalServer(tmp / "server.log", args=[
            "--model-store", str(store), "--models", ",".join(names),
            "--default-model", names[0], "--version-policy", "latest",
            "--max-batch-size", str(args.max_batch_size), "--processes", str(args.processes),
            "--log-level", "warning"])
        results: dict[str, list[dict]] = {name: [] for name in names}
        with server:
            for name in names:
                check(server.url, name, body)
                if args.warmup > 0:
                    drive(f"{server.url}/classify?model={name}", body_file, args.clients,
                          args.warmup)
            print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
                  f"{args.clients} connections, {args.seconds:g} s per model per round, "
                  f"max batch {args.max_batch_size}, {args.processes} serving process(es), "
                  f"{args.windows} window(s) ({frames_for(args.windows)} frames) per request")
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                cells = []
                for name in order:
                    result = drive(f"{server.url}/classify?model={name}", body_file,
                                   args.clients, args.seconds)
                    results[name].append(result)
                    cells.append(f"{name} {result['rps']:.0f}")
                print(f"  round {r + 1}: " + ", ".join(cells) + " req/s")
        if server.returncode not in (0, None):
            print(f"warning: server exited with {server.returncode}")

    median = {name: {k: statistics.median(r[k] for r in rs)
                     for k in ("rps", "p50_ms", "p99_ms")} for name, rs in results.items()}
    errors = {name: sum(r["errors"] for r in rs) for name, rs in results.items()}
    full = median[names[0]]["rps"]
    print(f"\n{'model':<20} {'req/s':>8} {'windows/s':>10} {'x full':>7} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6}  (median of {args.rounds} rounds)")
    for name in names:
        m = median[name]
        print(f"{name:<20} {m['rps']:>8.1f} {m['rps'] * args.windows:>10.1f} "
              f"{m['rps'] / full:>6.2f}x {m['p50_ms']:>8.1f} {m['p99_ms']:>8.1f} "
              f"{errors[name]:>6}")
    if any(errors.values()):
        raise SystemExit("errors (non-2xx answers or socket errors) make these rates "
                         "meaningless: fewer --clients, or a larger DIFFRES_MAX_QUEUE_SIZE")
    for name, goal in GOALS.items():
        ratio = median[name]["rps"] / full
        print(f"goal {name} >= {goal}x full: {ratio:.2f}x, "
              f"{'met' if ratio >= goal else 'NOT met'}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
