"""SIGTERM under load against a live server: requests in flight complete (200), new ones get
503 ``shutting_down`` with ``Connection: close`` until the process exits 0, and no request
is lost (every request sent gets an answer).

The first test holds a long request in flight, so the server keeps draining (not exited) for
as long as the test needs: every step waits for an event, never for a guessed time. The
second talks the way load balancers do, with nothing long in flight, so the process exits
while clients still send: pooled keep-alive connections in closed loops that route to the
server until the balancer's health check sees /readyz 503, across the whole drain grace
period and the exit.
"""

import asyncio
import io
import math
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import numpy as np

from tests.serving.conftest import IN_T_DIM, N_MELS, make_settings
from tests.serving.harness import (
    LiveServer,
    asgi_client,
    eventually,
    metric_samples,
    wait_until,
    wav_bytes,
)

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


POOLS = 32  # a load balancer's connection pools for this server, one kept-alive connection each
HEALTH_PERIOD_S = 0.5  # its health check of /readyz
GRACE_S = 2.0  # drain_grace_s of the server: longer than the balancer takes to notice
POOL_DRAIN_S = 20.0  # its drain_timeout_s; nothing long is in flight, so it is never used up
NPY = {"content-type": "application/x-npy"}


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() before the request was sent
    status: int | str  # the HTTP status; "refused": no connection, nothing sent; "lost"
    code: str  # the error code of a non-200, or the exception that lost it
    connection: str | None  # the Connection header of the answer


class Balancer:
    """What a load balancer does with one backend: a health check of /readyz every
    ``HEALTH_PERIOD_S`` on a fresh connection; from its first failure (``out``) it routes no
    new request there. Until then its pools keep sending, 503s or not."""

    def __init__(self, base: str) -> None:
        self.base, self.out, self.out_at = base, threading.Event(), math.inf

    def run(self) -> None:
        while not self.out.wait(HEALTH_PERIOD_S):
            if _unready(self.base):
                self.out_at = time.monotonic()
                self.out.set()

    def pool(self, body: bytes, outcomes: list["Outcome"]) -> None:
        """One pool in a closed loop until the backend is out (or refuses a connection)."""
        with httpx.Client(timeout=60) as client:
            while not self.out.is_set():
                outcome = _post(client, f"{self.base}/classify", body)
                outcomes.append(outcome)
                if outcome.status in ("refused", "lost"):
                    return


def _unready(base: str) -> bool:
    """/readyz on a fresh connection answers 503 (or nothing answers any more)."""
    try:
        return httpx.get(f"{base}/readyz", timeout=10).status_code == 503
    except httpx.TransportError:
        return True


def _window_npy() -> bytes:
    """One model window, [in_t_dim, n_mels] float32 log-mels, as .npy."""
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).normal(-8, 2, (IN_T_DIM, N_MELS)).astype("<f4"))
    return buffer.getvalue()


def _post(client: httpx.Client, url: str, body: bytes) -> Outcome:
    """One request; a connection refused sent nothing, any other transport error after the
    connection was made lost a request that was sent."""
    sent = time.monotonic()
    try:
        r = client.post(url, content=body, headers=NPY)
    except httpx.ConnectError:
        return Outcome(sent, "refused", "", None)
    except httpx.HTTPError as exc:
        return Outcome(sent, "lost", type(exc).__name__, None)
    code = "" if r.status_code == 200 else r.json()["error"]["code"]
    return Outcome(sent, r.status_code, code, r.headers.get("connection"))


def _watch_exit(proc, since: float, exited: dict[str, float]) -> None:
    """Records the exit status and when it came (seconds after ``since``)."""
    exited["code"] = proc.wait()
    exited["after"] = time.monotonic() - since


def test_sigterm_behind_a_load_balancer_answers_every_request(model_store, tmp_path, capsys):
    server = LiveServer(model_store, tmp_path / "server.log", models="kws12-diffres",
                        intra_op_threads=1, drain_grace_s=GRACE_S,
                        drain_timeout_s=POOL_DRAIN_S).wait_ready()
    balancer, body, pools = Balancer(server.base), _window_npy(), [[] for _ in range(POOLS)]
    threads = [threading.Thread(target=balancer.run, daemon=True)] + [
        threading.Thread(target=balancer.pool, args=(body, o), daemon=True) for o in pools]
    exited: dict[str, float] = {}
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(sum(o.status == 200 for o in p) >= 3 for p in pools),
                   what="every pool served on its kept-alive connection")
        proc = server.proc
        proc.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        threading.Thread(target=_watch_exit, args=(proc, sigterm_at, exited),
                         daemon=True).start()
        for thread in threads:
            thread.join(120)
        wait_until(lambda: "after" in exited, GRACE_S + POOL_DRAIN_S + 60, "the exit")
    finally:
        balancer.out.set()
        server.stop()
    outcomes = [o for p in pools for o in p]
    lost = [o for o in outcomes if o.status == "lost"]
    statuses = [o.status for o in outcomes]
    noticed = balancer.out_at - sigterm_at
    with capsys.disabled():
        print(f"\nbalanced drain: {len(outcomes)} requests from {POOLS} pools: "
              f"{statuses.count(200)} answered 200, {statuses.count(503)} answered 503, "
              f"{statuses.count('refused')} connections refused, {len(lost)} lost; the "
              f"balancer saw /readyz 503 {noticed:.2f} s after SIGTERM; exit {exited['code']} "
              f"{exited['after']:.2f} s after SIGTERM (grace {GRACE_S} s)")
    assert not lost, f"{len(lost)} sent, never answered: {Counter(o.code for o in lost)}"
    assert set(statuses) <= {200, 503, "refused"}, statuses
    assert all((o.code, o.connection) == ("shutting_down", "close")
               for o in outcomes if o.status == 503)
    assert all(o.sent < sigterm_at for o in outcomes if o.status == 200)  # accepted before
    assert noticed < GRACE_S  # the balancer heard it while the server still answered
    assert exited["code"] == 0
    assert GRACE_S <= exited["after"] <= GRACE_S + POOL_DRAIN_S


def test_every_answer_while_draining_closes_its_connection(model_store):
    """Probes and scrapes too, not only inference: a pool that only checks health must not
    keep an idle connection that the exit would close under its next request."""
    paths = ("/healthz", "/readyz", "/metrics", "/models", "/nowhere")

    async def scenario() -> dict[str, tuple[int, str | None]]:
        async with asgi_client(make_settings(model_store)) as (app, client):
            app.state.service.begin_drain()
            answers = {p: await client.get(p) for p in paths}
            answers["/classify"] = await client.post("/classify", content=_window_npy(),
                                                     headers=NPY)
        return {p: (r.status_code, r.headers.get("connection")) for p, r in answers.items()}

    answers = asyncio.run(scenario())
    assert {p: c for p, (_, c) in answers.items()} == dict.fromkeys(answers, "close")
    assert answers["/healthz"][0] == 200 and answers["/readyz"][0] == 503
    assert answers["/classify"][0] == 503
