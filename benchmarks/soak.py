"""Soak test (not in CI): a local server under half its capacity for N minutes.

Starts ``python -m service serve`` on a free loopback port, measures its capacity (closed
loop, 8 clients, a mix of requests), then sends that mix open loop at half the capacity for
``--minutes``. Samples the server's RSS every ``--sample-s`` seconds, writes the memory curve
to a PNG and prints the figures. Fails (exit 1) on any error or if RSS grew by ``--max-growth``
(5 %) or more from the end of the warm-up to the end of the run.

    .venv/bin/python benchmarks/soak.py --minutes 10 --out docs/soak_memory.png

Without ``--store``, a small store of untrained test models is exported to a temporary
directory (needs torch).
"""

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.server import LocalServer  # noqa: E402


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "200":
            self.latencies.append(seconds)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200")


def request_mix(n_mels: int) -> list[tuple[str, bytes, dict]]:
    """(path, body, headers): audio WAV/FLAC classify and compress, JSON and .npy."""
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)
    wav, flac, spec = io.BytesIO(), io.BytesIO(), rng.normal(-8, 2, (150, n_mels))
    sf.write(wav, wave, 16000, format="WAV")
    sf.write(flac, wave, 16000, format="FLAC")
    npy = io.BytesIO()
    np.save(npy, spec.astype(np.float32))
    return [("/classify", wav.getvalue(), {"content-type": "audio/wav"}),
            ("/classify", wav.getvalue(), {"content-type": "audio/wav"}),
            ("/compress", flac.getvalue(), {"content-type": "audio/flac"}),
            ("/classify", json.dumps({"spectrogram": spec.tolist()}).encode(),
             {"content-type": "application/json"}),
            ("/compress", npy.getvalue(), {"content-type": "application/x-npy",
                                           "accept": "application/x-npz"})]


async def send(client: httpx.AsyncClient, base: str, item, tally: Tally) -> None:
    path, body, headers = item
    t0 = time.monotonic()
    try:
        r = await client.post(base + path, content=body, headers=headers)
        status = str(r.status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    tally.add(status, time.monotonic() - t0)


async def capacity(base: str, mix, seconds: float = 5.0, clients: int = 8) -> float:
    tally, end = Tally(), time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as client:
        async def loop(k):
            i = k
            while time.monotonic() < end:
                await send(client, base, mix[i % len(mix)], tally)
                i += 1

        await asyncio.gather(*(loop(k) for k in range(clients)))
    return len(tally.latencies) / seconds


async def soak(base: str, mix, rate: float, seconds: float, pid: int, sample_s: float):
    tally, samples, tasks = Tally(), [], set()
    proc = psutil.Process(pid)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256)) as client:
        t0 = next_sample = time.monotonic()
        i = 0
        while (now := time.monotonic()) < t0 + seconds:
            if now >= next_sample:
                samples.append((now - t0, proc.memory_info().rss))
                next_sample += sample_s
            task = asyncio.create_task(send(client, base, mix[i % len(mix)], tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)
        samples.append((time.monotonic() - t0, proc.memory_info().rss))
    return tally, samples, i


def plot(samples, warmup_s: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s for s, _ in samples]) / 60
    rss = np.array([r for _, r in samples]) / 2 ** 20
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, rss, marker=".", lw=1)
    ax.axvspan(0, warmup_s / 60, color="0.9", label="warm-up (not judged)")
    ax.set(xlabel="minutes", ylabel="server RSS (MiB)", title=title)
    ax.set_ylim(0, rss.max() * 1.15)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def judge(samples, warmup_s: float) -> tuple[float, float, float]:
    """(RSS at the end of the warm-up, RSS at the end, growth in %)."""
    after = [r for t, r in samples if t >= warmup_s]
    base = after[0]
    end = float(np.median(after[-3:]))
    return base, end, 100 * (end - base) / base


def build_store(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.model_store_builder import build_serving_store

    return build_serving_store(root)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--store", type=Path, help="model store (default: export test models)")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--warmup-s", type=float, default=60.0, help="not judged for growth")
    p.add_argument("--max-growth", type=float, default=5.0, help="percent")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "soak_memory.png")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or build_store(Path(tmp) / "store")
        server = LocalServer(Path(tmp) / "server.log",
                             args=["--model-store", str(store), "--models", "kws12-diffres",
                                   "--devices", "cpu"])
        base = server.start()
        try:
            mix = request_mix(httpx.get(f"{base}/models/kws12-diffres").json()["versions"][-1]
                              ["input"]["n_mels"])
            cap = asyncio.run(capacity(base, mix))
            rate = cap / 2
            print(f"capacity {cap:.1f} req/s (closed loop, 8 clients); soaking at {rate:.1f} "
                  f"req/s for {args.minutes:g} min", flush=True)
            tally, samples, sent = asyncio.run(soak(base, mix, rate, args.minutes * 60,
                                                    server.proc.pid, args.sample_s))
        finally:
            code = server.stop(60)
    rss0, rss1, growth = judge(samples, min(args.warmup_s, args.minutes * 30))
    lat = np.array(tally.latencies)
    print(f"sent {sent}, answered 200: {len(lat)}, errors: {tally.errors} {tally.statuses}")
    if len(lat):
        print(f"latency p50 {1000 * np.percentile(lat, 50):.1f} ms, p99 "
              f"{1000 * np.percentile(lat, 99):.1f} ms, max {1000 * lat.max():.1f} ms")
    print(f"RSS after warm-up {rss0 / 2 ** 20:.1f} MiB, at the end {rss1 / 2 ** 20:.1f} MiB, "
          f"max {max(r for _, r in samples) / 2 ** 20:.1f} MiB: growth {growth:+.2f} % "
          f"(limit {args.max_growth:g} %); server exit code {code}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(samples, min(args.warmup_s, args.minutes * 30), args.out,
         f"soak: {args.minutes:g} min at {rate:.0f} req/s (half capacity), "
         f"{tally.errors} errors, RSS {growth:+.1f} %")
    print(f"memory curve: {os.path.relpath(args.out, ROOT)}")
    ok = tally.errors == 0 and growth < args.max_growth and code == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
