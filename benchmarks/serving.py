"""Serving throughput and latency on loopback: dynamic batching against batch size 1.

    python benchmarks/serving.py [--model-store model_store] [--model kws12-diffres]
                                 [--clients 64] [--seconds 15]

Steps, all in one run so the ratios compare like with like on a shared machine:
1. raw backend throughput: the model's ONNX session run on full batches and on single
   windows, no HTTP, with the intra-op threads the server gives its worker;
2. served throughput, closed loop (``--clients`` connections each sending one-window
   spectrograms back to back) with dynamic batching on (``--max-batch-size``) and with
   ``DIFFRES_MAX_BATCH_SIZE=1``;
3. paced load at half the batched peak: each connection waits a random think time (mean
   clients / rate) between requests, latency p50/p95/p99.
The load generator is wrk (``apt-get install wrk``), a C client: a Python one saturates
before this server does (~350 req/s here). It only targets 127.0.0.1.
"""

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.server import LocalServer  # noqa: E402
from load_tests.wrk import drive  # noqa: E402
from service.config import Settings  # noqa: E402
from service.manifest import Manifest  # noqa: E402
from service.serving.runtime.backend_registry import make_backend  # noqa: E402
from service.serving.runtime.workers import plan_workers  # noqa: E402


def window_body(manifest: Manifest, seed: int = 0) -> bytes:
    """One model window of log-mel noise as an .npy body."""
    rng = np.random.default_rng(seed)
    spec = rng.normal(-6.0, 2.0, (manifest.compressor.in_t_dim, manifest.frontend.n_mels))
    buf = io.BytesIO()
    np.save(buf, spec.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def worker_threads() -> int:
    """Intra-op threads of the served model's one CPU worker (DIFFRES_* env as the server)."""
    settings = Settings()
    return plan_workers(["cpu"], 1, os.cpu_count() or 1,
                        intra_op_threads=settings.intra_op_threads)[0].threads


def raw_backend(model_dir: Path, manifest: Manifest, batch: int, seconds: float,
                threads: int) -> float:
    """Windows per second of the bare ONNX session at ``batch`` windows."""
    runner = make_backend("onnx", model_dir / "model.onnx", manifest.inputs[0].name, None,
                          ["CPUExecutionProvider"], threads,
                          sha256=manifest.artifacts["model.onnx"].sha256)
    runner.load("cpu")
    x = np.random.default_rng(0).normal(-6, 2, (batch, manifest.compressor.in_t_dim,
                                               manifest.frontend.n_mels)).astype(np.float32)
    runner.run(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.run(x)
        done += batch
    return done / (time.perf_counter() - start)


def start_server(store: Path, model: str, max_batch: int) -> LocalServer:
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"diffres-bench-server-{os.getpid()}.log"
    return LocalServer(log, args=["--model-store", str(store), "--models", model,
                                  "--default-model", model, "--max-batch-size", str(max_batch),
                                  "--log-level", "warning"])


def row(name: str, r: dict) -> str:
    return (f"{name:<34} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['errors']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="kws12-diffres")
    parser.add_argument("--version", type=int, default=0, help="0: latest")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()

    versions = sorted(int(p.name) for p in (args.model_store / args.model).iterdir()
                      if p.name.isdigit())
    model_dir = args.model_store / args.model / str(args.version or versions[-1])
    manifest = Manifest.read(model_dir)
    body_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"diffres-bench-{os.getpid()}.npy"
    body_file.write_bytes(window_body(manifest))
    print(f"model {manifest.name}/{manifest.version}: window {manifest.compressor.in_t_dim} x "
          f"{manifest.frontend.n_mels}, {os.cpu_count()} cores, {args.clients} clients, "
          f"{args.seconds:g} s per phase")

    threads = worker_threads()
    raw = raw_backend(model_dir, manifest, args.max_batch_size, min(args.seconds, 10), threads)
    raw1 = raw_backend(model_dir, manifest, 1, min(args.seconds, 10), threads)
    print(f"raw backend ({threads} intra-op thread(s), as the server's worker), batch "
          f"{args.max_batch_size}: {raw:.0f} windows/s; batch 1: {raw1:.0f} windows/s "
          f"({raw / raw1:.2f}x)")
    print(f"{'phase':<34} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    with start_server(args.model_store, args.model, args.max_batch_size) as server:
        batched = drive(server.url + "/classify", body_file, args.clients, args.seconds)
        print(row(f"batched (max {args.max_batch_size}), closed loop", batched))
        half = drive(server.url + "/classify", body_file, args.clients, args.seconds,
                     rate=batched["rps"] / 2)
        print(row(f"batched, paced at {batched['rps'] / 2:.0f} req/s", half))
    with start_server(args.model_store, args.model, 1) as server:
        single = drive(server.url + "/classify", body_file, args.clients, args.seconds)
        print(row("batch size 1, closed loop", single))
    body_file.unlink(missing_ok=True)
    body_file.with_suffix(".lua").unlink(missing_ok=True)
    print(f"batching speed-up (served): {batched['rps'] / single['rps']:.2f}x (target >= 3x)")
    print(f"p99 at half the batched peak: {half['p99_ms']:.1f} ms (target <= 50 ms)")
    print(f"served / raw backend throughput: {batched['rps'] / raw:.2f}")


if __name__ == "__main__":
    main()
