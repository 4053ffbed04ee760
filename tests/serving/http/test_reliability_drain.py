"""SIGTERM under load against a live server: requests in flight complete (200), new ones get
503 ``shutting_down`` with ``Connection: close`` until the process exits 0, and no request
is lost (every request sent gets an answer).

Every step waits for an event, never for a guessed time: the long request is admitted with
half its body sent and gets the rest only after the clients have been refused, so it is in
flight at SIGTERM and keeps the server draining (not exited) for as long as the test needs.
"""

import asyncio
import signal
import time

import httpx
import numpy as np

from tests.serving.harness import LiveServer, eventually, metric_samples, wav_bytes

HEADERS = {"content-type": "audio/wav"}
LONG_S = 600  # seconds of audio (FLAC) in the request that is in flight at SIGTERM
CLIENTS = 6


async def _client(client, url, body, outcomes):
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
        if code == "shutting_down":
            return


async def _held(body: bytes, release: asyncio.Event):
    """``body`` in two halves, the second once ``release`` is set."""
    yield body[:len(body) // 2]
    await release.wait()
    yield body[len(body) // 2:]


async def _scenario(server: LiveServer) -> dict:
    base = server.base
    url = f"{base}/classify"
    short = wav_bytes(np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32))
    t = np.arange(16000 * LONG_S) / 16000
    long = wav_bytes((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), fmt="FLAC")
    outcomes, probes, release = [], [], asyncio.Event()
    async with httpx.AsyncClient(timeout=300) as client:

        async def inflight() -> float:
            text = (await client.get(f"{base}/metrics")).text
            return sum(v for _, v in metric_samples(text, "diffres_inflight_requests"))

        slow = asyncio.create_task(client.post(url, content=_held(long, release),
                                               headers=HEADERS))
        try:
            async def admitted() -> bool:
                return await inflight() == 1

            await eventually(admitted, what="the long request admitted")
            clients = [asyncio.create_task(_client(client, url, short, outcomes))
                       for _ in range(CLIENTS)]
            await eventually(lambda: sum(o[2] == 200 for o in outcomes) >= 2 * CLIENTS,
                             what="the clients served")  # under load
            sigterm_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                return (await client.get(f"{base}/readyz")).status_code == 503

            await eventually(draining, what="/readyz turning 503 after SIGTERM")
            for _ in range(5):  # the long request is still uploading: the server is up
                r = await client.post(url, content=short, headers=HEADERS)
                probes.append((r.status_code, r.json()["error"]["code"],
                               r.headers.get("connection")))
            await asyncio.gather(*clients)  # each ends at its first 503
        finally:
            release.set()
        answer = await slow
    code = await asyncio.to_thread(server.proc.wait, 300)
    return {"outcomes": outcomes, "probes": probes, "slow": answer, "exit": code,
            "sigterm_at": sigterm_at}


def test_sigterm_under_load_finishes_in_flight_refuses_new_and_loses_nothing(model_store,
                                                                             tmp_path, capsys):
    server = LiveServer(model_store, tmp_path / "server.log", models="kws12-diffres",
                        max_batch_size=8, drain_timeout_s=300, intra_op_threads=1).wait_ready()
    try:
        r = asyncio.run(asyncio.wait_for(_scenario(server), 600))
    finally:
        server.stop()
    kinds = [(s, c) for _, _, s, c in r["outcomes"]]
    at = r["sigterm_at"]
    finished_after = sum(s == 200 and sent < at < done for sent, done, s, _ in r["outcomes"])
    with capsys.disabled():
        print(f"\ndrain: {len(kinds)} load requests from {CLIENTS} clients: "
              f"{kinds.count((200, ''))} answered 200 ({finished_after} of them in flight at "
              f"SIGTERM), {kinds.count((503, 'shutting_down'))} refused 503 shutting_down, lost "
              f"{sum(s == 'lost' for s, _ in kinds)}; a {LONG_S} s request in flight at SIGTERM "
              f"answered {r['slow'].status_code}; {len(r['probes'])} probes during the drain "
              f"all 503 + Connection: close; exit code {r['exit']}")
    assert all(k in ((200, ""), (503, "shutting_down")) for k in kinds), kinds  # none lost
    assert kinds.count((200, "")) > 0
    assert kinds.count((503, "shutting_down")) == CLIENTS  # every client refused, then gone
    assert r["probes"] and all(p == (503, "shutting_down", "close") for p in r["probes"])
    assert r["slow"].status_code == 200, r["slow"].text  # in flight at SIGTERM: completed
    assert r["slow"].json()["input_frames"] == 1 + 16000 * LONG_S // 160
    assert r["exit"] == 0
    assert "draining" in server.log()
