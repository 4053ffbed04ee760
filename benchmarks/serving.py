"""Serving throughput and latency on loopback: dynamic batching against batch size 1.

    python benchmarks/serving.py [--model-store model_store] [--model kws12-diffres]
                                 [--clients 64] [--seconds 15]

Steps, all in one run so the ratios compare like with like on a shared machine:
1. raw backend throughput: the model's ONNX session run on full batches, no HTTP;
2. served throughput, closed loop (``--clients`` concurrent clients each sending one-window
   spectrograms back to back) with dynamic batching on (``--max-batch-size``) and with
   ``DIFFRES_MAX_BATCH_SIZE=1``;
3. open loop at half the batched peak: requests at a fixed rate, latency p50/p95/p99.
The load generator runs in its own process and only targets 127.0.0.1.
"""

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.server import LocalServer  # noqa: E402
from service.manifest import Manifest  # noqa: E402
from service.serving.backends import make_backend  # noqa: E402


def window_body(manifest: Manifest, seed: int = 0) -> bytes:
    """One model window of log-mel noise as an .npy body."""
    rng = np.random.default_rng(seed)
    spec = rng.normal(-6.0, 2.0, (manifest.compressor.in_t_dim, manifest.frontend.n_mels))
    buf = io.BytesIO()
    np.save(buf, spec.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def raw_backend(model_dir: Path, manifest: Manifest, batch: int, seconds: float) -> float:
    """Windows per second of the bare ONNX session at ``batch`` windows."""
    runner = make_backend("onnx", model_dir / "model.onnx", manifest.inputs[0].name, None,
                          ["CPUExecutionProvider"], 0,
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


def load_child(url: str, body: bytes, mode: str, clients: int, seconds: float,
               rate: float) -> dict:
    """The load generator (runs in its own process): closed or open loop."""
    latencies: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            r = await client.post("/classify", content=body,
                                  headers={"content-type": "application/x-npy"})
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1

    async def closed(client: httpx.AsyncClient, stop: float) -> None:
        while time.perf_counter() < stop:
            await one(client)

    async def main() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            await one(client)  # warm the connection
            latencies.clear()
            start = time.perf_counter()
            stop = start + seconds
            if mode == "closed":
                await asyncio.gather(*(closed(client, stop) for _ in range(clients)))
            else:
                tasks, k = [], 0
                while (now := time.perf_counter()) < stop:
                    due = start + k / rate
                    if due > now:
                        await asyncio.sleep(due - now)
                    tasks.append(asyncio.create_task(one(client)))
                    k += 1
                await asyncio.gather(*tasks)
            return time.perf_counter() - start

    elapsed = asyncio.run(main())
    lat = np.array(latencies) * 1000
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": float(pct[0]), "p95_ms": float(pct[1]), "p99_ms": float(pct[2])}


def drive(url: str, body_file: Path, mode: str, clients: int, seconds: float,
          rate: float = 0.0) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", url, str(body_file), mode,
                          str(clients), str(seconds), str(rate)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, body, mode, clients, seconds, rate = args.child
        print(json.dumps(load_child(url, Path(body).read_bytes(), mode, int(clients),
                                    float(seconds), float(rate))))
        return

    versions = sorted(int(p.name) for p in (args.model_store / args.model).iterdir()
                      if p.name.isdigit())
    model_dir = args.model_store / args.model / str(args.version or versions[-1])
    manifest = Manifest.read(model_dir)
    body_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"diffres-bench-{os.getpid()}.npy"
    body_file.write_bytes(window_body(manifest))
    print(f"model {manifest.name}/{manifest.version}: window {manifest.compressor.in_t_dim} x "
          f"{manifest.frontend.n_mels}, {os.cpu_count()} cores, {args.clients} clients, "
          f"{args.seconds:g} s per phase")

    raw = raw_backend(model_dir, manifest, args.max_batch_size, min(args.seconds, 10))
    raw1 = raw_backend(model_dir, manifest, 1, min(args.seconds, 10))
    print(f"raw backend, batch {args.max_batch_size}: {raw:.0f} windows/s; batch 1: "
          f"{raw1:.0f} windows/s ({raw / raw1:.1f}x)")
    print(f"{'phase':<34} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    with start_server(args.model_store, args.model, args.max_batch_size) as server:
        batched = drive(server.url, body_file, "closed", args.clients, args.seconds)
        print(row(f"batched (max {args.max_batch_size}), closed loop", batched))
        half = drive(server.url, body_file, "open", args.clients, args.seconds,
                     rate=batched["rps"] / 2)
        print(row(f"batched, open loop at {batched['rps'] / 2:.0f} req/s", half))
    with start_server(args.model_store, args.model, 1) as server:
        single = drive(server.url, body_file, "closed", args.clients, args.seconds)
        print(row("batch size 1, closed loop", single))
    body_file.unlink(missing_ok=True)
    print(f"batching speed-up (served): {batched['rps'] / single['rps']:.2f}x (target >= 3x)")
    print(f"p99 at half the batched peak: {half['p99_ms']:.1f} ms (target <= 50 ms)")
    print(f"served / raw backend throughput: {batched['rps'] / raw:.2f}")


if __name__ == "__main__":
    main()
