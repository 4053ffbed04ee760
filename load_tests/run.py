"""Run the Locust load test headless and report it.

    python -m load_tests.run --url http://127.0.0.1:8000 --users 8 --spawn-rate 2 --duration 60
    python -m load_tests.run --start-server --model-store model_store --duration 60

``--start-server`` runs ``python -m service serve`` on a free loopback port (its flags from
``--server-args``) and waits for /readyz; it is stopped with SIGTERM at the end. The output
directory gets ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
``report.html`` (Locust's report), ``loadtest.png`` (throughput and p50/p95/p99 over time),
``summary.json`` and the logs. Exit status: 0 when every request succeeded.

Targets must be loopback addresses unless ``--allow-remote`` is given (for a staging host
of your own; never a shared or production service).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from load_tests import report
from load_tests.server import ROOT, LocalServer, is_loopback

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server to load")
    p.add_argument("--users", type=int, default=8, help="concurrent users")
    p.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    p.add_argument("--duration", type=int, default=60, help="seconds of load")
    p.add_argument("--mix", default="", help='user weights, e.g. "wav1=4,wav10=1,'
                   'spectrogram=2,compress=1" (LOADTEST_MIX)')
    p.add_argument("--model", default="", help="?model= of every request (LOADTEST_MODEL)")
    p.add_argument("--wait", default="", help='"min,max" seconds a user waits between '
                   'requests (LOADTEST_WAIT_S, default "0,0.1"); "0,0" for closed-loop '
                   'saturation')
    p.add_argument("--out", type=Path, help="output directory "
                   "(default runs/loadtest/<date-time>)")
    p.add_argument("--start-server", action="store_true",
                   help="start a local server on a free loopback port instead of --url")
    p.add_argument("--model-store", type=Path, help="with --start-server: DIFFRES_MODEL_STORE")
    p.add_argument("--server-args", default="", help='with --start-server: extra serve flags, '
                   'e.g. "--devices cpu --max-batch-size 32"')
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --url (your own staging host only)")
    args = p.parse_args(argv)
    for name in ("users", "duration"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not args.start_server and not args.allow_remote and not is_loopback(args.url):
        p.error(f"{args.url} is not a loopback address (use --allow-remote for your own host)")
    args.out = args.out or ROOT / "runs" / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    return args


def run_locust(args: argparse.Namespace, url: str) -> int:
    """Locust headless in a subprocess (gevent stays out of this process); its exit code."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    if args.mix:
        env["LOADTEST_MIX"] = args.mix
    if args.model:
        env["LOADTEST_MODEL"] = args.model
    if args.wait:
        env["LOADTEST_WAIT_S"] = args.wait
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--host", url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
               "--run-time", f"{args.duration}s", "--stop-timeout", "30",
               "--csv", str(args.out / "locust"), "--csv-full-history",
               "--html", str(args.out / "report.html"), "--only-summary",
               "--loglevel", "WARNING", "--logfile", str(args.out / "locust.log")]
    with open(args.out / "locust.out", "wb") as out:
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=args.duration + 120)
    return proc.returncode


def load(args: argparse.Namespace, url: str) -> dict:
    before = report.scrape(url)
    started = time.monotonic()
    code = run_locust(args, url)
    wall = time.monotonic() - started
    after = report.scrape(url)
    stats = report.read_stats(args.out / "locust")
    history = report.read_history(args.out / "locust")
    png = None
    if history:
        title = (f"diffres-serve load test: {args.users} users, {args.duration} s "
                 f"({args.mix or 'default mix'})")
        png = report.plot(history, args.out / "loadtest.png", title)
    aggregated = next((r for r in stats if r["name"] == "Aggregated"), None)
    return {"url": url, "users": args.users, "spawn_rate": args.spawn_rate,
            "duration_s": args.duration, "wall_s": round(wall, 1), "wait_s": args.wait,
            "mix": args.mix or "default", "locust_exit_code": code, "stats": stats,
            "aggregated": aggregated, "server": report.server_summary(before, after),
            "files": {"html": str(args.out / "report.html"), "png": str(png) if png else None,
                      "csv": str(args.out / "locust_stats.csv")}}


def print_summary(summary: dict) -> None:
    print(report.format_table(summary["stats"]))
    server = summary["server"]
    print(f"server: {server['requests']:.0f} requests, {server['batches']:.0f} batches of "
          f"{server['mean_batch_windows']:.1f} windows on average, "
          f"frames {server['input_frames']:.0f} in / {server['output_frames']:.0f} out "
          f"(x{server['compression']:.3f})")
    print(f"report: {summary['files']['html']}  plot: {summary['files']['png']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.start_server:
        env = {"DIFFRES_MODEL_STORE": str(args.model_store)} if args.model_store else {}
        server = LocalServer(args.out / "server.log", env=env,
                             args=shlex.split(args.server_args))
    try:
        url = server.start() if server else args.url
        summary = load(args, url)
    finally:
        if server:
            code = server.stop()
            print(f"server stopped with exit code {code}")
    if server:
        summary["server_exit_code"] = server.returncode
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary)
    aggregated = summary["aggregated"] or {"requests": 0, "failures": 1}
    ok = summary["locust_exit_code"] == 0 and aggregated["failures"] == 0 \
        and aggregated["requests"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
