"""WS /stream under load: detection latency of concurrent real-time streams, and what the
streams cost the uploads that share their batcher.

    .venv/bin/python benchmarks/streaming.py [--model-store model_store]
        [--model kws12-diffres] [--streams 16] [--seconds 20] [--upload-rate 10]

Steps, in one run against one local server (``load_tests.server.LocalServer``, one process,
CPU):
1. uploads alone: POST /classify of a 1 s WAV (multipart), open loop at ``--upload-rate``
   requests per second for ``--seconds``: latency p50/p99;
2. the same uploads while ``--streams`` WebSocket streams send 16-bit PCM in real time
   (100 ms chunks, starts staggered over one hop), for ``--seconds``.
   Streams ask for threshold 0.01 and refractory 0, so that nearly every window holds a
   detection whatever the audio (the measure is the path, not the model's accuracy).
   Detection latency (client side, loopback): from sending the chunk that holds the last
   sample of the detection's window to receiving the detection. The server's own
   histogram (``diffres_stream_detection_latency_seconds``, from that chunk's arrival to the
   send) is printed too.
Goals (issue #15): detection latency p99 <= 150 ms; upload p99 with streams <= 1.5x without.
Prints a markdown table and one JSON line; progress goes to stderr.
"""

import argparse
import asyncio
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.server import LocalServer  # noqa: E402

CHUNK_S = 0.1


def speechy(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Noise with bursts of harmonic tones, a stand-in for speech."""
    rng = np.random.default_rng(seed)
    wave = 0.01 * rng.standard_normal(int(seconds * rate))
    t = np.arange(int(0.4 * rate)) / rate
    for at in np.arange(0.3, seconds - 0.5, 1.3):
        f0 = rng.uniform(120, 250)
        burst = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.hanning(len(t))
        i = int(at * rate)
        wave[i:i + len(t)] += 0.3 * burst
    return np.clip(wave, -1, 1).astype(np.float32)


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def uploads(base: str, body: bytes, rate: float, seconds: float) -> list[float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async def one() -> None:
            nonlocal errors
            began = time.perf_counter()
            r = await client.post("/classify", files={"file": ("a.wav", body, "audio/wav")})
            if r.status_code != 200:
                errors += 1
                return
            latencies.append(time.perf_counter() - began)

        tasks, began = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    if errors:
        print(f"{errors} uploads failed", file=sys.stderr)
    return latencies


async def one_stream(url: str, pcm: np.ndarray, rate: int, delay: float,
                     seconds: float) -> tuple[list[float], list[float], int]:
    """(detection latencies, window-score latencies, close code) of one real-time stream."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    chunk = int(rate * CHUNK_S)
    sent_at: list[float] = []  # perf_counter when chunk k was sent
    detections, scores = [], []
    async with connect(url, max_size=1 << 22) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "scores": True,
                                  "threshold": 0.01, "refractory_seconds": 0}))
        json.loads(await ws.recv())

        async def reader() -> None:
            async for raw in ws:
                now = time.perf_counter()
                m = json.loads(raw)
                if m["type"] not in ("scores", "detection"):
                    continue
                k = (round(m["end"] * rate) - 1) // chunk
                (scores if m["type"] == "scores" else detections).append(now - sent_at[k])

        reading = asyncio.create_task(reader())
        began = time.perf_counter()
        for k in range(int(seconds / CHUNK_S)):
            await asyncio.sleep(max(0.0, began + k * CHUNK_S - time.perf_counter()))
            data = pcm[(k * chunk) % len(pcm):][:chunk]
            sent_at.append(time.perf_counter())
            await ws.send(data.tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await reading
        return detections, scores, ws.close_code


def server_histogram(base: str) -> dict[str, float]:
    import httpx

    text = httpx.get(base + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("diffres_stream_detection_latency_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def p99_from_buckets(buckets: dict[str, float]) -> str:
    total = buckets.get("+Inf", 0)
    for le, count in buckets.items():
        if total and count >= 0.99 * total:
            return f"<= {float(le) * 1000:g} ms"
    return "n/a"


async def measure(base: str, args) -> dict:
    rate = 16000
    body = wav_bytes(speechy(1.0, rate, 0), rate)
    url = base.replace("http://", "ws://") + f"/stream?model={args.model}"
    print("warm-up", file=sys.stderr)
    await uploads(base, body, args.upload_rate, 2.0)
    print(f"uploads alone, {args.seconds:g} s", file=sys.stderr)
    alone = await uploads(base, body, args.upload_rate, args.seconds)
    print(f"uploads + {args.streams} streams, {args.seconds:g} s", file=sys.stderr)
    pcms = [(speechy(20.0, rate, 1 + i) * 32767).astype("<i2") for i in range(args.streams)]
    hop = 0.25
    streams = [one_stream(url, pcms[i], rate, i * hop / args.streams, args.seconds + 1.0)
               for i in range(args.streams)]

    async def later_uploads():
        await asyncio.sleep(1.0)  # streams connected and past their first window
        return await uploads(base, body, args.upload_rate, args.seconds)

    results = await asyncio.gather(later_uploads(), *streams)
    mixed, per_stream = results[0], results[1:]
    detections = [x for d, _, _ in per_stream for x in d]
    scores = [x for _, s, _ in per_stream for x in s]
    codes = sorted({c for _, _, c in per_stream})
    buckets = server_histogram(base)
    return {"streams": args.streams, "seconds": args.seconds, "upload_rate": args.upload_rate,
            "close_codes": codes, "detections": len(detections), "windows": len(scores),
            "detection_p50_ms": pct(detections, 50) * 1000,
            "detection_p99_ms": pct(detections, 99) * 1000,
            "window_p99_ms": pct(scores, 99) * 1000,
            "server_detection_p99": p99_from_buckets(buckets),
            "uploads_alone": len(alone), "uploads_mixed": len(mixed),
            "upload_alone_p50_ms": pct(alone, 50) * 1000,
            "upload_alone_p99_ms": pct(alone, 99) * 1000,
            "upload_mixed_p50_ms": pct(mixed, 50) * 1000,
            "upload_mixed_p99_ms": pct(mixed, 99) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=str(ROOT / "model_store"))
    parser.add_argument("--model", default="kws12-diffres")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--upload-rate", type=float, default=10.0, help="uploads per second")
    parser.add_argument("--log", default=str(ROOT / "build" / "streaming-server.log"))
    args = parser.parse_args()
    env = {"DIFFRES_MODEL_STORE": args.model_store, "DIFFRES_MODELS": args.model,
           "DIFFRES_DEFAULT_MODEL": args.model, "DIFFRES_DEVICES": "cpu",
           "DIFFRES_MAX_STREAMS": str(max(64, args.streams)), "DIFFRES_LOG_LEVEL": "warning"}
    server = LocalServer(Path(args.log), env=env)
    base = server.start()
    try:
        r = asyncio.run(measure(base, args))
    finally:
        server.stop()
    ratio = r["upload_mixed_p99_ms"] / r["upload_alone_p99_ms"]
    print(f"| {r['streams']} real-time streams, {r['seconds']:g} s, uploads at "
          f"{r['upload_rate']:g}/s | value | goal |")
    print("| --- | --- | --- |")
    print(f"| detection latency p50 / p99 (client) | {r['detection_p50_ms']:.1f} / "
          f"{r['detection_p99_ms']:.1f} ms ({r['detections']} detections) | p99 <= 150 ms |")
    print(f"| detection latency p99 (server histogram) | {r['server_detection_p99']} | |")
    print(f"| window scores p99 (client) | {r['window_p99_ms']:.1f} ms ({r['windows']} "
          "windows) | |")
    print(f"| upload p50 / p99 alone | {r['upload_alone_p50_ms']:.1f} / "
          f"{r['upload_alone_p99_ms']:.1f} ms | |")
    print(f"| upload p50 / p99 with streams | {r['upload_mixed_p50_ms']:.1f} / "
          f"{r['upload_mixed_p99_ms']:.1f} ms ({ratio:.2f}x) | p99 <= 1.5x |")
    print(json.dumps(r | {"upload_p99_ratio": ratio}))
    return 0 if r["close_codes"] == [1000] else 1


if __name__ == "__main__":
    sys.exit(main())
