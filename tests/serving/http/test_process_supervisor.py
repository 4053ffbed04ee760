"""Several serving processes on one port behave as one server: they share the connections and
the load, the metrics add up, a reload reaches every process, a dead process is replaced, and
SIGTERM or a startup misconfiguration ends them all."""

import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from service.config import Settings
from service.serving.http.process_supervisor import BALANCED_ACCEPT
from tests.serving.conftest import IN_T_DIM, N_MELS
from tests.serving.harness import LiveServer, drop_version, store_copy, wait_until

ROOT = Path(__file__).resolve().parents[3]
MODEL = "kws12-avgpool"


def npy_window() -> bytes:
    buffer = io.BytesIO()
    spec = np.random.default_rng(0).normal(-6.0, 2.0, (IN_T_DIM, N_MELS)).astype(np.float32)
    np.save(buffer, spec)
    return buffer.getvalue()


def fresh_get(url: str) -> httpx.Response:
    """On a new connection, which the kernel may hand to any of the processes."""
    with httpx.Client(timeout=30) as client:
        return client.get(url)


def serving_children(server: LiveServer) -> list[int]:
    """Live serving processes of the supervisor (not multiprocessing's resource tracker)."""
    pids = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # a zombie not reaped yet, or gone meanwhile
            continue
    return pids


@pytest.fixture
def group(model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {MODEL: [1]})
    server = LiveServer(store, tmp_path / "server.log", processes=2, default_model=MODEL,
                        admin_key="admin").wait_ready()
    yield server, store
    server.stop()


def test_cores_are_divided_among_the_processes(monkeypatch):
    monkeypatch.setattr("service.config.usable_cores", lambda: 8)
    assert Settings(processes=2).cores_per_process() == 4
    assert Settings(processes=0).process_count() == 8
    assert Settings(processes=16).cores_per_process() == 1
    assert Settings(processes=2).feature_thread_count() == 4  # default: the process's cores
    assert Settings(processes=2, feature_threads=3).feature_thread_count() == 3


@pytest.mark.skipif(not BALANCED_ACCEPT, reason="the kernel balances SO_REUSEPORT on Linux")
def test_new_connections_are_spread_over_the_processes(group):
    """A keep-alive client stays on the process that accepted it, so a lopsided split idles
    one process while the other queues. On one shared socket whichever process accepts first
    takes them: 64 wrk clients once split 0/64 (on an idle server it mostly came out even)."""
    server, _ = group
    port = int(server.url.rsplit(":", 1)[1])

    def split() -> list[int]:
        return sorted(sum(1 for c in psutil.Process(pid).net_connections("tcp")
                          if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
                      for pid in serving_children(server))

    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
    try:
        wait_until(lambda: sum(split()) == 64, what="64 accepted connections")
        assert min(split()) >= 12, split()  # a hash split: below 12 of 64 once in ~3 million
    finally:
        for client in clients:
            client.close()


def test_every_answer_is_counted_in_the_metrics_of_any_process(group):
    server, _ = group
    assert len(serving_children(server)) == 2
    body = npy_window()
    for _ in range(30):
        with httpx.Client(timeout=30) as client:
            r = client.post(server.url + "/classify", content=body,
                            headers={"content-type": "application/x-npy"})
            assert r.status_code == 200, r.text
    for _ in range(6):  # whichever process answers the scrape
        text = fresh_get(server.url + "/metrics").text
        line = next(line for line in text.splitlines() if line.startswith(
            'diffres_requests_total{endpoint="/classify",model="kws12-avgpool",status="200"}'))
        assert float(line.rsplit(" ", 1)[1]) == 30.0


def test_a_reload_in_one_process_reaches_every_process(group):
    server, store = group
    drop_version(store, MODEL, 1, 2)
    r = httpx.post(server.url + f"/admin/models/{MODEL}/reload",
                   headers={"Authorization": "Bearer admin"}, timeout=60)
    assert r.status_code == 200, r.text

    def all_serve_version_2() -> bool:
        return all(fresh_get(server.url + f"/models/{MODEL}").json()["latest"] == 2
                   for _ in range(12))

    wait_until(all_serve_version_2, what="every process serving version 2")


def test_a_process_that_dies_is_replaced(group):
    server, _ = group
    victim = serving_children(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in serving_children(server)
               and len(serving_children(server)) == 2, what="a replacement process")
    wait_until(lambda: fresh_get(server.url + "/readyz").status_code == 200,
               what="ready again")
    assert all(fresh_get(server.url + "/readyz").status_code == 200 for _ in range(8))


def test_sigterm_drains_every_process_and_exits_zero(group):
    server, _ = group
    children = serving_children(server)
    assert server.stop() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in children)


def test_a_startup_misconfiguration_stops_the_group_with_status_3(model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {MODEL: [1]})
    cmd = [sys.executable, "-m", "service", "serve", "--model-store", str(store),
           "--devices", "cpu", "--port", "0", "--processes", "2", "--default-model", "nope"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "default_model 'nope' is not in the model store" in done.stderr
