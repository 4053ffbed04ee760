"""SIGTERM under load against a live server: requests in flight complete (200), new ones get
503 ``shutting_down`` with ``Connection: close`` until the process exits 0, and no request
is lost (every request sent gets an answer)."""

import asyncio
import signal
import time

import httpx
import numpy as np

from tests.serving.harness import LiveServer, wav_bytes

HEADERS = {"content-type": "audio/wav"}
LONG_S = 600  # seconds of audio (FLAC) in the request that is in flight at SIGTERM


async def _client(client, url, body, outcomes, stop_on_drain):
    """Closed loop; stops after its first 503 shutting_down, as a well-behaved client
    that moves to another replica would."""
    while True:
        sent = time.monotonic()
        try:
            r = await client.post(url, content=body, headers=HEADERS)
        except httpx.HTTPError as exc:
            outcomes.append((sent, time.monotonic(), "lost", type(exc).__name__))
            return
        code = r.json()["error"]["code"] if r.status_code != 200 else ""
        outcomes.append((sent, time.monotonic(), r.status_code, code))
        if code == "shutting_down" or stop_on_drain.is_set():
            return


async def _probe(client, url, body, until: asyncio.Task, seen: list):
    """While the long request is still running (so the server has not exited), every new
    request must be refused with 503 shutting_down and Connection: close."""
    while not until.done():
        r = await client.post(url, content=body, headers=HEADERS)
        seen.append((r.status_code, r.json()["error"]["code"], r.headers.get("connection")))
        await asyncio.sleep(0.05)


async def _scenario(server: LiveServer) -> dict:
    url = f"{server.base}/classify"
    short = wav_bytes(np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32))
    t = np.arange(16000 * LONG_S) / 16000
    long = wav_bytes((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), fmt="FLAC")
    outcomes, probes, stop = [], [], asyncio.Event()
    async with httpx.AsyncClient(timeout=60) as client:
        t0 = time.monotonic()
        assert (await client.post(url, content=long, headers=HEADERS)).status_code == 200
        alone = time.monotonic() - t0
        clients = [asyncio.create_task(_client(client, url, short, outcomes, stop))
                   for _ in range(6)]
        await asyncio.sleep(1.0)
        slow = asyncio.create_task(client.post(url, content=long, headers=HEADERS))
        await asyncio.sleep(alone / 3)  # uploaded, being decoded or batched: in flight
        sigterm_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        await _probe(client, url, short, slow, probes)
        stop.set()
        await asyncio.gather(*clients)
        answer = await slow
    code = await asyncio.to_thread(server.proc.wait, 30)
    return {"outcomes": outcomes, "probes": probes, "slow": answer, "exit": code,
            "sigterm_at": sigterm_at, "alone_s": alone}


def test_sigterm_under_load_finishes_in_flight_refuses_new_and_loses_nothing(model_store,
                                                                             tmp_path, capsys):
    server = LiveServer(model_store, tmp_path / "server.log", models="kws12-diffres",
                        max_batch_size=8, drain_timeout_s=20, intra_op_threads=1).wait_ready()
    try:
        r = asyncio.run(_scenario(server))
    finally:
        server.stop()
    kinds = [(s, c) for _, _, s, c in r["outcomes"]]
    at = r["sigterm_at"]
    finished_after = sum(s == 200 and sent < at < done for sent, done, s, _ in r["outcomes"])
    with capsys.disabled():
        print(f"\ndrain: {len(kinds)} load requests from 6 clients: "
              f"{kinds.count((200, ''))} answered 200 ({finished_after} of them in flight at "
              f"SIGTERM), {kinds.count((503, 'shutting_down'))} refused 503 shutting_down, lost "
              f"{sum(s == 'lost' for s, _ in kinds)}; a {LONG_S} s request in flight at SIGTERM "
              f"answered {r['slow'].status_code}; {len(r['probes'])} probes during the drain "
              f"all 503 + Connection: close; exit code {r['exit']}")
    assert all(k in ((200, ""), (503, "shutting_down")) for k in kinds), kinds  # none lost
    assert kinds.count((200, "")) > 0 and kinds.count((503, "shutting_down")) > 0
    assert r["probes"] and all(p == (503, "shutting_down", "close") for p in r["probes"])
    assert r["slow"].status_code == 200, r["slow"].text  # in flight at SIGTERM: completed
    assert r["slow"].json()["input_frames"] == 1 + 16000 * LONG_S // 160
    assert r["exit"] == 0
    assert "draining" in server.log()
