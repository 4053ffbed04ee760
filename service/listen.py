"""``listen`` subcommand: stream an audio file, or the microphone, to ``WS /stream`` and
print what comes back.

    python -m service listen --url ws://127.0.0.1:8000/stream speech.wav [--realtime]
    python -m service listen --url ws://127.0.0.1:8000/stream --microphone [--seconds 30]

Detections are printed to stdout as JSON lines (with ``--scores``, every window's scores
too); the server's ``ready``, ``end`` and ``error`` messages go to stderr. ``--realtime``
sends the file at its own pace (as a microphone would); without it, as fast as the server
classifies (never more than half its buffer ahead of the scores it has sent back).
Exit status: 0 when the server closed the stream normally (1000), else 1.

The file is sent as 16-bit PCM at its own sample rate and channel count; the server
downmixes and resamples. ``--microphone`` records mono 16-bit PCM from the default input
device with ``sounddevice`` (PortAudio: ``pip install sounddevice``, ``apt-get install
libportaudio2``; not a dependency of the service) until ``--seconds`` pass or Ctrl+C. The
API key (``--api-key`` or ``DIFFRES_API_KEY``) goes in the Authorization
header.
"""

import argparse
import asyncio
import json
import os
import sys
import urllib.parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("listen", help="stream an audio file to WS /stream",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?",
                        help="audio file (WAV, FLAC, OGG: what soundfile reads)")
    parser.add_argument("--microphone", action="store_true",
                        help="stream the default input device instead of a file")
    parser.add_argument("--seconds", type=float, default=None,
                        help="with --microphone: stop after this long (default: Ctrl+C)")
    parser.add_argument("--rate", type=int, default=16000, help="microphone sample rate")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/stream")
    parser.add_argument("--model", default=None)
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--api-key", default=os.environ.get("DIFFRES_API_KEY") or None)
    parser.add_argument("--realtime", action="store_true", help="send at the file's pace")
    parser.add_argument("--chunk-ms", type=float, default=100.0, help="audio per message")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--refractory", type=float, default=None, help="seconds")
    parser.add_argument("--scores", action="store_true", help="print every window's scores")
    parser.set_defaults(func=run)


def stream_url(url: str, model: str | None, version: int | None) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query += [(k, str(v)) for k, v in (("model", model), ("version", version)) if v is not None]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def run(args: argparse.Namespace) -> int:
    if bool(args.file) == args.microphone:
        raise SystemExit("listen: give an audio file or --microphone (one of them)")
    try:
        return asyncio.run(listen(args))
    except KeyboardInterrupt:
        return 0


async def microphone_chunks(rate: int, chunk: int, seconds: float | None):
    """Mono int16 [chunk, 1] blocks from the default input device as they are recorded."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise SystemExit("listen --microphone needs sounddevice: pip install sounddevice "
                         f"(and apt-get install libportaudio2): {exc}") from None
    import numpy as np

    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue = asyncio.Queue()

    def recorded(data, frames, time, status) -> None:  # PortAudio's thread
        loop.call_soon_threadsafe(blocks.put_nowait, bytes(data))

    with sounddevice.RawInputStream(samplerate=rate, channels=1, dtype="int16",
                                    blocksize=chunk, callback=recorded):
        sent, limit = 0, None if seconds is None else int(seconds * rate)
        while limit is None or sent < limit:
            block = np.frombuffer(await blocks.get(), "<i2").reshape(-1, 1)
            sent += len(block)
            yield block


async def listen(args: argparse.Namespace, out=None) -> int:
    import numpy as np
    import soundfile as sf
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    out = out or sys.stdout
    if args.microphone:
        audio, rate = None, args.rate
    else:
        audio, rate = sf.read(args.file, dtype="int16", always_2d=True)  # [N, C]
    start = {"type": "start", "sample_rate": int(rate), "encoding": "pcm_s16le",
             "channels": 1 if audio is None else int(audio.shape[1]), "scores": True}
    if args.threshold is not None:
        start["threshold"] = args.threshold
    if args.refractory is not None:
        start["refractory_seconds"] = args.refractory
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with connect(stream_url(args.url, args.model, args.version),
                       additional_headers=headers, max_size=1 << 22) as ws:
        await ws.send(json.dumps(start))
        ready = json.loads(await ws.recv())
        print(json.dumps(ready), file=sys.stderr)
        if ready.get("type") != "ready":
            await ws.close()
            return 1
        window = ready["window_seconds"] * rate
        hop = ready["hop_seconds"] * rate
        ahead = max(1, ready["max_buffered_windows"] // 2)
        state = {"scored": 0, "open": True}
        progress = asyncio.Event()

        async def reader() -> None:
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "scores":
                        state["scored"] += 1
                        progress.set()
                        if args.scores:
                            print(json.dumps(message), file=out, flush=True)
                    elif kind == "detection":
                        print(json.dumps(message), file=out, flush=True)
                    else:
                        print(json.dumps(message), file=sys.stderr, flush=True)
            except ConnectionClosed:
                pass
            finally:
                state["open"] = False
                progress.set()

        reading = asyncio.create_task(reader())
        loop = asyncio.get_running_loop()
        chunk = max(1, int(rate * args.chunk_ms / 1000))
        began = loop.time()
        try:
            if audio is None:
                async for block in microphone_chunks(rate, chunk, args.seconds):
                    if not state["open"]:
                        break
                    await ws.send(block.astype("<i2").tobytes())
            for at in range(0, 0 if audio is None else len(audio), chunk):
                if args.realtime:
                    await asyncio.sleep(max(0.0, began + at / rate - loop.time()))
                else:
                    done = 0 if at < window else int((at - window) // hop) + 1
                    while state["open"] and state["scored"] < done - ahead:
                        progress.clear()
                        await progress.wait()
                if not state["open"]:
                    break
                await ws.send(np.ascontiguousarray(audio[at:at + chunk]).astype("<i2")
                              .tobytes())
            if state["open"]:
                await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        await reading
    return 0 if ws.close_code == 1000 else 1
