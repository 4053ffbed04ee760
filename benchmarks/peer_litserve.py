"""Our server against LitServe 0.2.19 serving the same ONNX files, side by side in one run:
closed-loop throughput on two workloads, then paced latency of our best configuration.

    .venv/bin/python benchmarks/peer_litserve.py [--model kws12-diffres] [--version N]
        [--clients 64] [--seconds 15] [--rounds 3] [--processes 1 2] [--threads N] [--warmup 2]
        [--peer-python build/peer-venv/bin/python] [--no-pause] [--no-gc-freeze]

Steps, all in one run so the ratios compare like with like on a shared machine:
1. the peer venv (LitServe pins its own FastAPI): ``--peer-python``, else
   ``build/peer-venv``, created if missing with python3.11 and ``peer_packages()``
   (onnxruntime pinned to ours), after a ``pip install --dry-run`` that must not pull torch;
2. two bodies from one synthetic 1 s speech-like clip, one model window each: ``wav``
   (multipart/form-data, the WAV in ``file``: decode, front end, model) and
   ``npy`` (application/x-npy, the clip's float32 [T, n_mels] log-mel from frontend.onnx:
   model only);
3. start LitServe (``benchmarks/peer/litserve_server.py``: the same model.onnx and
   frontend.onnx, max batch 32, batch timeout 5 ms, one CPU worker) and one of ours per
   ``--processes`` value (``DIFFRES_PROCESSES``; max batch 32, queue delay 5 ms), each once,
   all with ``--threads`` intra-op threads for the model (per process for ours; default
   cores - 1, what our server gives its one worker; both run the front end on one thread);
   one request of each kind to each: the probabilities must match LitServe's within 1e-4;
4. after a ``--warmup`` run each, wrk (C load generator, loopback only, 10 s request
   timeout), ``--clients`` connections, closed loop, ``--seconds`` per run, one run at a
   time, for each workload against each server, the other servers paused (SIGSTOP) meanwhile
   (``--no-pause`` leaves them running); the server order alternates each round (ours-p1,
   ours-p2, litserve; then reversed);
5. paced load at half the median peak of our best configuration per workload (each
   connection waits a random think time, as ``load_tests.wrk`` paces), ``--rounds`` runs:
   median p50/p95/p99, and each run's p99.
Prints a markdown table (median req/s per server and workload, ours/LitServe, goal >= 1.5x;
paced latency, goal p99 <= 50 ms) and one JSON line; progress goes to stderr. Exits 1 when a
server fails to start or dies, answers a non-2xx or socket error, or disagrees with LitServe.
Besides wrk's numbers it reads each server's CPU time from /proc: CPU ms per request and
cores used under load (on a shared machine, whether a server could use the cores at all),
and, with ``--no-pause``, what the servers not under load burn meanwhile (LitServe's idle
worker polls its queue).
"""

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.server import (  # noqa: E402
    LocalServer,
    http_status,
    listening_ports,
    process_tree,
)
from load_tests.wrk import drive, require_wrk  # noqa: E402
from service.manifest import Manifest  # noqa: E402

LITSERVE = "litserve==0.2.19"
PEER_VENV = ROOT / "build" / "peer-venv"
PEER_APP = ROOT / "benchmarks" / "peer" / "litserve_server.py"
PEER = "litserve"
MAX_BATCH, QUEUE_DELAY_S = 32, 0.005
RATIO_GOAL, P99_GOAL_MS, AGREE = 1.5, 50.0, 1e-4
BOUNDARY = "diffres-peer-benchmark-boundary"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Failed(Exception):
    """A reason to stop: a server that does not start, or a broken setup."""


# ---------------------------------------------------------------- the peer venv


def peer_packages() -> list[str]:
    """What the peer venv holds: onnxruntime pinned to ours so both run the same kernels;
    python-multipart because starlette parses forms with it and LitServe does not pull it."""
    return [LITSERVE, f"onnxruntime=={importlib.metadata.version('onnxruntime')}", "numpy",
            "soundfile", "soxr", "python-multipart"]


def peer_versions(python: str) -> dict[str, str] | None:
    """litserve and onnxruntime versions of ``python``'s environment; None when it lacks a
    package the app imports."""
    code = ("import json, litserve, onnxruntime, soundfile, soxr, multipart; print(json.dumps("
            "{'litserve': litserve.__version__, 'onnxruntime': onnxruntime.__version__}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def create_peer_venv() -> None:
    """python3.11 venv at ``PEER_VENV`` with ``peer_packages()``, refusing a set that would
    install torch (LitServe does not need it; it would only slow this down)."""
    if not (PEER_VENV / "bin" / "python").exists():
        base = shutil.which("python3.11")
        if base is None:
            raise Failed("python3.11 is needed to create the peer venv (or pass --peer-python)")
        log(f"creating {PEER_VENV.relative_to(ROOT)} with {base}")
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    report = subprocess.run([*pip, "--dry-run", "--report", "-", *peer_packages()],
                            capture_output=True, text=True, check=True).stdout
    names = sorted(item["metadata"]["name"].lower() for item in json.loads(report)["install"])
    if any(name == "torch" or name.startswith("nvidia-") for name in names):
        raise Failed(f"the peer packages would install torch: {', '.join(names)}")
    log(f"installing {' '.join(peer_packages())} ({len(names)} distributions, no torch)")
    subprocess.run([*pip, *peer_packages()], check=True)


def peer_python(given: str | None) -> tuple[str, dict[str, str]]:
    """The interpreter LitServe runs under, and its versions; creates the venv if needed."""
    python = given or str(PEER_VENV / "bin" / "python")
    versions = peer_versions(python) if Path(python).exists() else None
    if versions is None or versions["litserve"] != LITSERVE.split("==")[1]:
        if given:
            raise Failed(f"{given} lacks {' '.join(peer_packages())}")
        create_peer_venv()
        versions = peer_versions(python)
        if versions is None:
            raise Failed(f"{python} still cannot import the peer packages")
    ours = importlib.metadata.version("onnxruntime")
    if versions["onnxruntime"] != ours:
        log(f"warning: LitServe's onnxruntime is {versions['onnxruntime']}, ours {ours}")
    return python, versions


# ---------------------------------------------------------------- bodies


@dataclass
class Workload:
    name: str
    content_type: str
    body: bytes
    body_file: Path


def speech_like(rate: int, samples: int, seed: int) -> np.ndarray:
    """A voiced-sounding clip: a gliding pitch with 1/k harmonics, a ~4 Hz syllable envelope
    and a little noise, peak 0.5 (so the front end sees speech-like spectra, not a tone)."""
    t = np.arange(samples) / rate
    f0 = 130 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    wave = envelope * voiced + np.random.default_rng(seed).normal(0, 0.05, samples)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def wav_bytes(manifest: Manifest, seed: int) -> bytes:
    """One model window of audio, (window frames - 1) x hop samples, as a 16-bit WAV."""
    f = manifest.frontend
    samples = (manifest.compressor.in_t_dim - 1) * f.hop_length
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(f.sample_rate, samples, seed), f.sample_rate, format="WAV",
             subtype="PCM_16")
    return buffer.getvalue()


def multipart(data: bytes) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="clip.wav"\r\nContent-Type: audio/wav\r\n\r\n').encode() + data + (
            f"\r\n--{BOUNDARY}--\r\n").encode()


def log_mel_npy(model_dir: Path, manifest: Manifest, wav: bytes) -> bytes:
    """The WAV's log-mel [T, n_mels] through frontend.onnx, as an .npy body; T must be one
    model window, so both workloads send the same window."""
    wave, _ = sf.read(io.BytesIO(wav), dtype="float32")
    frontend = ort.InferenceSession(str(model_dir / "frontend.onnx"),
                                    providers=["CPUExecutionProvider"])
    name = frontend.get_inputs()[0].name
    mel = frontend.run(None, {name: wave[np.newaxis]})[0][0].astype(np.float32)
    expected = (manifest.compressor.in_t_dim, manifest.frontend.n_mels)
    if mel.shape != expected:
        raise Failed(f"the clip's log-mel is {list(mel.shape)}, not one window {list(expected)}")
    buffer = io.BytesIO()
    np.save(buffer, mel, allow_pickle=False)
    return buffer.getvalue()


def workloads(model_dir: Path, manifest: Manifest, tmp: Path, seed: int) -> list[Workload]:
    wav = wav_bytes(manifest, seed)
    made = [Workload("wav", f"multipart/form-data; boundary={BOUNDARY}", multipart(wav),
                     tmp / "wav.body"),
            Workload("npy", "application/x-npy", log_mel_npy(model_dir, manifest, wav),
                     tmp / "npy.body")]
    for w in made:
        w.body_file.write_bytes(w.body)
    return made


# ---------------------------------------------------------------- servers


def cpu_seconds(root: int) -> float:
    """User + system CPU time of ``root``'s live process tree."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free loopback port: LitServe refuses port 0. Another process could take it before
    LitServe binds; ``PeerServer`` checks that its own process listens on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerServer:
    """benchmarks/peer/litserve_server.py in its own session (LitServe forks an API server
    and spawns a manager and an inference worker): SIGTERM ends it as Ctrl+C does."""

    def __init__(self, python: str, config: Path, log_path: Path,
                 ready_timeout: float = 120.0) -> None:
        self.python, self.config, self.log_path = python, config, log_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.python, str(PEER_APP), "--config", str(self.config), "--port",
                 str(self.port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        give_up = time.monotonic() + self.ready_timeout
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise Failed(f"LitServe exited with {self.proc.returncode}:\n{self.tail()}")
            if http_status(self.url + "/health") == 200:
                if self.port not in listening_ports(self.proc.pid):
                    self.stop()
                    raise Failed(f"port {self.port} answers, but not from LitServe")
                return
            time.sleep(0.25)
        self.stop()
        raise Failed(f"LitServe not ready within {self.ready_timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 40.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log("LitServe did not stop on SIGTERM: killing its process group")
        with contextlib.suppress(ProcessLookupError):  # leftovers of the session we started
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class Served:
    """One server under test, whichever kind."""

    name: str
    url: str
    pid: int
    alive: Callable[[], bool]
    tail: Callable[[], str]
    processes: int = 0  # processes in its tree once started


def ours_env(args: argparse.Namespace, model_dir: Path, processes: int) -> dict[str, str]:
    """Settings of one of our configurations: only this model and version, CPU only."""
    return {"DIFFRES_MODEL_STORE": str(model_dir.parents[1]),
            "DIFFRES_MODELS": args.model, "DIFFRES_DEFAULT_MODEL": args.model,
            "DIFFRES_VERSION_POLICY": f"specific:{model_dir.name}",
            "DIFFRES_DEVICES": "cpu", "DIFFRES_ONNX_PROVIDERS": "CPUExecutionProvider",
            "DIFFRES_MAX_BATCH_SIZE": str(MAX_BATCH),
            "DIFFRES_MAX_QUEUE_DELAY_MS": f"{QUEUE_DELAY_S * 1000:g}",
            "DIFFRES_INTRA_OP_THREADS": str(args.threads),
            "DIFFRES_PROCESSES": str(processes), "DIFFRES_LOG_LEVEL": "warning",
            "DIFFRES_GC_FREEZE": str(not args.no_gc_freeze).lower()}


def peer_config(model_dir: Path, manifest: Manifest, threads: int, path: Path) -> Path:
    """What the LitServe app needs of our manifest (it does not import ``service``)."""
    path.write_text(json.dumps({
        "model_dir": str(model_dir.resolve()), "labels": manifest.labels,
        "window_frames": manifest.compressor.in_t_dim, "n_mels": manifest.frontend.n_mels,
        "sample_rate": manifest.frontend.sample_rate, "pad_value": manifest.frontend.silence,
        "threads": threads, "max_batch_size": MAX_BATCH, "batch_timeout_s": QUEUE_DELAY_S}))
    return path


def start_servers(stack: contextlib.ExitStack, args: argparse.Namespace, python: str,
                  model_dir: Path, manifest: Manifest, tmp: Path) -> list[Served]:
    """Ours (one per --processes) then LitServe, each started once; stopped by ``stack``."""
    servers = []
    for processes in args.processes:
        name = f"ours-p{processes}"
        log(f"starting {name}")
        ours = LocalServer(tmp / f"{name}.log", env=ours_env(args, model_dir, processes))
        try:
            ours.start()
        except (RuntimeError, TimeoutError) as exc:
            raise Failed(f"{name} did not start: {exc}") from exc
        stack.callback(ours.stop)
        servers.append(Served(name, ours.url, ours.proc.pid,
                              lambda s=ours: s.proc is not None and s.proc.poll() is None,
                              ours.tail))
    log("starting LitServe")
    peer = PeerServer(python, peer_config(model_dir, manifest, args.threads, tmp / "peer.json"),
                      tmp / "litserve.log")
    stack.callback(peer.stop)
    peer.start()
    servers.append(Served(PEER, peer.url, peer.proc.pid,
                          lambda: peer.proc is not None and peer.proc.poll() is None,
                          peer.tail))
    for s, processes in zip(servers, args.processes):
        s.processes = len(process_tree(s.pid))
        if s.processes < processes:
            log(f"note: {s.name} runs {s.processes} process(es): this server does not act on "
                f"DIFFRES_PROCESSES={processes} yet")
    servers[-1].processes = len(process_tree(servers[-1].pid))
    return servers


# ---------------------------------------------------------------- answers


def classify(url: str, workload: Workload) -> dict:
    """One POST /classify; Failed with the answer unless it is 200."""
    request = urllib.request.Request(f"{url}/classify", data=workload.body, method="POST",
                                     headers={"Content-Type": workload.content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise Failed(f"{url} {workload.name}: HTTP {error.code}: {error.read()[:500]!r}") from None


def compare_answers(servers: list[Served], loads: list[Workload], labels: list[str],
                    version: int) -> dict[str, dict[str, float]]:
    """Max |p_ours - p_LitServe| over the labels, per workload and our configuration; ours
    must also say it served the version LitServe loads."""
    diffs: dict[str, dict[str, float]] = {}
    for w in loads:
        peer = classify(next(s for s in servers if s.name == PEER).url, w)["probabilities"]
        diffs[w.name] = {}
        for s in servers:
            if s.name == PEER:
                continue
            answer = classify(s.url, w)
            if answer.get("version") != version:
                raise Failed(f"{s.name} served version {answer.get('version')}, not {version}")
            diffs[w.name][s.name] = max(abs(answer["probabilities"][k] - peer[k])
                                        for k in labels)
    return diffs


# ---------------------------------------------------------------- load


@dataclass
class Run:
    requests: int
    status_errors: int
    socket_errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_req: float = 0.0
    cores: float = 0.0  # CPU the server under load used, in cores
    idle_cpu: dict[str, float] = field(default_factory=dict)  # other servers, % of a core


def wrk(url: str, w: Workload, clients: int, seconds: float, rate: float = 0.0) -> Run:
    """wrk POSTing ``w`` to ``url``: closed loop, or paced to about ``rate`` req/s."""
    r = drive(url, w.body_file, clients, seconds, rate, w.content_type, timeout_s=10)
    return Run(r["requests"], r["status_errors"], r["socket_errors"], r["rps"], r["p50_ms"],
               r["p95_ms"], r["p99_ms"])


@contextlib.contextmanager
def paused(servers: list[Served]):
    """The process trees of ``servers`` stopped (SIGSTOP) for the block, then resumed: a
    server not under load must not take CPU from the one that is (LitServe's idle worker
    polls its queue, ~15 % of a core; ``--no-pause`` measures with them running)."""
    pids = [pid for s in servers for pid in process_tree(s.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def measured(server: Served, servers: list[Served], w: Workload, args: argparse.Namespace,
             rate: float = 0.0) -> Run:
    """One wrk run against ``server``, with the CPU time every server spent meanwhile (the
    others are paused unless ``--no-pause``)."""
    others = [] if args.no_pause else [s for s in servers if s is not server]
    before = {s.name: cpu_seconds(s.pid) for s in servers}
    start = time.monotonic()
    with paused(others):
        run = wrk(f"{server.url}/classify", w, args.clients, args.seconds, rate)
    elapsed = time.monotonic() - start
    spent = {s.name: cpu_seconds(s.pid) - before[s.name] for s in servers}
    run.cpu_ms_per_req = 1000 * spent[server.name] / max(run.requests, 1)
    run.cores = spent[server.name] / elapsed
    run.idle_cpu = {name: 100 * t / elapsed for name, t in spent.items() if name != server.name}
    return run


def problems(server: Served, w: Workload, run: Run, what: str) -> list[str]:
    """What went wrong in one run: error answers, or a server that died."""
    found = []
    if run.status_errors or run.socket_errors:
        found.append(f"{w.name}/{server.name} {what}: {run.status_errors} non-2xx answers, "
                     f"{run.socket_errors} socket errors")
    if not server.alive():
        found.append(f"{server.name} died during {w.name} {what}")
        log(f"{server.name} died; its log ends:\n{server.tail()}")
    for problem in found:
        log(f"FAILURE: {problem}")
    return found


def closed_loop(servers: list[Served], loads: list[Workload], args: argparse.Namespace,
                failures: list[str]) -> dict[str, dict[str, list[Run]]]:
    """Warm-up, then ``--rounds`` rounds; the server order reverses every other round."""
    if args.warmup > 0:
        for w in loads:
            for s in servers:
                run = wrk(f"{s.url}/classify", w, args.clients, args.warmup)
                failures.extend(problems(s, w, run, "warm-up"))
    results: dict[str, dict[str, list[Run]]] = {w.name: {s.name: [] for s in servers}
                                                 for w in loads}
    for r in range(args.rounds):
        order = servers if r % 2 == 0 else servers[::-1]
        for w in loads:
            cells = []
            for s in order:
                run = measured(s, servers, w, args)
                results[w.name][s.name].append(run)
                failures.extend(problems(s, w, run, f"round {r + 1}"))
                cells.append(f"{s.name} {run.rps:.0f}")
            log(f"round {r + 1} {w.name}: " + ", ".join(cells) + " req/s")
    return results


def median(runs: list[Run], key: str) -> float:
    return statistics.median(getattr(r, key) for r in runs)


def paced(servers: list[Served], loads: list[Workload], results: dict, args: argparse.Namespace,
          failures: list[str]) -> dict[str, tuple[str, float, list[Run]]]:
    """Per workload: our best configuration at half its median closed-loop peak, ``rounds``
    runs (one unlucky tail on a shared machine is not the server's p99)."""
    out = {}
    for w in loads:
        ours = [s for s in servers if s.name != PEER]
        best = max(ours, key=lambda s: median(results[w.name][s.name], "rps"))
        rate = 0.5 * median(results[w.name][best.name], "rps")
        runs = []
        for i in range(args.rounds):
            run = measured(best, servers, w, args, rate)
            log(f"paced {w.name} {i + 1}: {best.name} at {rate:.0f} req/s: p99 "
                f"{run.p99_ms:.1f} ms")
            failures.extend(problems(best, w, run, "paced run"))
            runs.append(run)
        out[w.name] = (best.name, rate, runs)
    return out


# ---------------------------------------------------------------- report


def closed_summary(results: dict[str, dict[str, list[Run]]]) -> dict:
    """Per workload and server: medians over the rounds, and the ratio to LitServe."""
    out: dict = {}
    for w, by_server in results.items():
        peer = median(by_server[PEER], "rps")
        out[w] = {name: {
            "rps": round(median(runs, "rps"), 1), "rps_runs": [round(r.rps, 1) for r in runs],
            "p50_ms": round(median(runs, "p50_ms"), 2), "p99_ms": round(median(runs, "p99_ms"), 2),
            "cpu_ms_per_req": round(median(runs, "cpu_ms_per_req"), 3),
            "cores": round(median(runs, "cores"), 2),
            "errors": sum(r.status_errors + r.socket_errors for r in runs),
            "vs_litserve": round(median(runs, "rps") / peer, 3) if peer else 0.0}
            for name, runs in by_server.items()}
    return out


def paced_summary(paced_runs: dict[str, tuple[str, float, list[Run]]]) -> dict:
    """Per workload: medians over the paced runs, and every run's p99."""
    return {w: {"server": name, "target_rps": round(rate, 1),
                **{key: round(median(runs, key), 2)
                   for key in ("rps", "p50_ms", "p95_ms", "p99_ms")},
                "p99_runs": [round(r.p99_ms, 1) for r in runs],
                "errors": sum(r.status_errors + r.socket_errors for r in runs)}
            for w, (name, rate, runs) in paced_runs.items()}


def goals(closed: dict, paced_by: dict) -> dict:
    """Best of ours / LitServe >= RATIO_GOAL per workload; paced p99 <= P99_GOAL_MS."""
    out = {}
    for w, by_server in closed.items():
        best = max((n for n in by_server if n != PEER), key=lambda n: by_server[n]["rps"])
        ratio = by_server[best]["vs_litserve"]
        out[f"{w}_ratio"] = {"server": best, "ratio": ratio, "met": ratio >= RATIO_GOAL}
    for w, p in paced_by.items():
        out[f"{w}_p99"] = {"server": p["server"], "p99_ms": p["p99_ms"],
                           "met": p["p99_ms"] <= P99_GOAL_MS}
    return out


def print_tables(args: argparse.Namespace, closed: dict, paced_by: dict, met: dict) -> None:
    print(f"\n## Closed loop: {args.clients} connections, {args.seconds:g} s per run, "
          f"median of {args.rounds} round(s)\n")
    print("| workload | server | req/s | runs (req/s) | p50 ms | p99 ms | CPU ms/req | "
          "cores used | errors | vs LitServe |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for w, by_server in closed.items():
        for name, m in by_server.items():
            print(f"| {w} | {name} | {m['rps']:.1f} | "
                  f"{', '.join(f'{r:.0f}' for r in m['rps_runs'])} | {m['p50_ms']:.1f} | "
                  f"{m['p99_ms']:.1f} | {m['cpu_ms_per_req']:.2f} | {m['cores']:.2f} | "
                  f"{m['errors']} | "
                  f"{m['vs_litserve']:.2f}x |")
    print(f"\n## Paced at half the peak of our best configuration, {args.clients} "
          f"connections, {args.seconds:g} s per run, median of {args.rounds} run(s)\n")
    print("| workload | server | target req/s | req/s | p50 ms | p95 ms | p99 ms | "
          "runs (p99 ms) | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for w, p in paced_by.items():
        print(f"| {w} | {p['server']} | {p['target_rps']:.0f} | {p['rps']:.1f} | "
              f"{p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['p99_ms']:.1f} | "
              f"{', '.join(f'{r:.0f}' for r in p['p99_runs'])} | {p['errors']} |")
    print()
    for key, g in met.items():
        w, kind = key.rsplit("_", 1)
        value = (f"{g['ratio']:.2f}x (goal >= {RATIO_GOAL}x)" if kind == "ratio" else
                 f"{g['p99_ms']:.1f} ms (goal <= {P99_GOAL_MS:g} ms)")
        what = "ours/LitServe" if kind == "ratio" else "paced p99"
        print(f"goal {what} on {w}: {g['server']} {value}: {'met' if g['met'] else 'NOT met'}")


def report(args: argparse.Namespace, meta: dict, servers: list[Served], results: dict,
           paced_runs: dict, diffs: dict, failures: list[str]) -> dict:
    """Markdown tables and goal lines on stdout; returns the JSON summary."""
    closed, paced_by = closed_summary(results), paced_summary(paced_runs)
    met, idle = goals(closed, paced_by), idle_cpu(results)
    print_tables(args, closed, paced_by, met)
    agree = "; ".join(f"{w} " + ", ".join(f"{n} {d:.1e}" for n, d in by.items())
                      for w, by in diffs.items())
    print(f"\nanswers, max |ours - LitServe| over the labels: {agree}")
    print("CPU the servers not under load burned meanwhile (mean, % of one core): "
          + ", ".join(f"{name} {pct:.1f}" for name, pct in idle.items()))
    print("processes in each server's tree: "
          + ", ".join(f"{s.name} {s.processes}" for s in servers))
    for failure in failures:
        print(f"FAILURE: {failure}")
    return {**meta, "closed_loop": closed, "paced": paced_by, "goals": met,
            "answers_max_abs_diff": diffs, "idle_cpu_pct": idle, "failures": failures}


def idle_cpu(results: dict) -> dict[str, float]:
    """Per server, its mean CPU use (% of a core) while the load was on another one."""
    seen: dict[str, list[float]] = {}
    for by_server in results.values():
        for runs in by_server.values():
            for run in runs:
                for name, pct in run.idle_cpu.items():
                    seen.setdefault(name, []).append(pct)
    return {name: round(statistics.mean(v), 1) for name, v in seen.items()}


# ---------------------------------------------------------------- main


def version_dir(store: Path, model: str, version: int | None) -> Path:
    """``store/model/version``, or the model's latest version when ``version`` is None."""
    versions = [p for p in (store / model).iterdir() if p.name.isdigit() and p.is_dir()]
    if not versions:
        raise Failed(f"{store / model} holds no version directory")
    if version is None:
        return max(versions, key=lambda p: int(p.name))
    if not (store / model / str(version)).is_dir():
        raise Failed(f"{store / model} has no version {version} (it has "
                     f"{', '.join(sorted((p.name for p in versions), key=int))})")
    return store / model / str(version)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="kws12-diffres")
    parser.add_argument("--version", type=int, help="model version (default: the latest; "
                        "issue #14 set its goals on kws12-diffres/3)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=15, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="our configurations: DIFFRES_PROCESSES values")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="intra-op threads of the model session, LitServe's and ours "
                        "(per process); default: what our server plans for one process")
    parser.add_argument("--warmup", type=int, default=2, help="seconds per server and "
                        "workload before the first round")
    parser.add_argument("--peer-python", help="an interpreter with the peer packages "
                        "(default: build/peer-venv, created if missing)")
    parser.add_argument("--no-pause", action="store_true", help="leave the servers not under "
                        "load running during each run (by default they are paused)")
    parser.add_argument("--no-gc-freeze", action="store_true", help="run ours with "
                        "DIFFRES_GC_FREEZE=false (to measure what the freeze buys)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    require_wrk()
    python, versions = peer_python(args.peer_python)
    model_dir = version_dir(args.model_store, args.model, args.version)
    manifest = Manifest.read(model_dir)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="diffres-peer-") as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        loads = workloads(model_dir, manifest, tmp, args.seed)
        servers = start_servers(stack, args, python, model_dir, manifest, tmp)
        diffs = compare_answers(servers, loads, manifest.labels, manifest.version)
        worst = max(d for w in diffs.values() for d in w.values())
        log(f"answers agree with LitServe's: max abs difference {worst:.2e}")
        if worst > AGREE:
            raise Failed(f"answers differ from LitServe's by up to {worst:.2e}: {diffs}")
        log(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
            f"{args.threads} intra-op thread(s)")
        results = closed_loop(servers, loads, args, failures)
        paced_runs = paced(servers, loads, results, args, failures)
        meta = {"model": args.model, "version": manifest.version, "clients": args.clients,
                "seconds": args.seconds, "rounds": args.rounds, "threads": args.threads,
                "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
                "peer": versions, "processes": {s.name: s.processes for s in servers}}
        summary = report(args, meta, servers, results, paced_runs, diffs, failures)
    print(json.dumps(summary))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl+C, so the servers started here are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        code = run(args)
    except (Failed, subprocess.CalledProcessError) as exc:  # servers are stopped by now
        log(f"FAILED: {exc}")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
