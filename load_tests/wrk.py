"""wrk, a C HTTP load generator, POSTing one body to one URL: what the serving benchmarks
measure throughput and latency with (a Python client saturates before the server does).
``apt-get install wrk``; it only ever targets the URL given (loopback here).
"""

import os
import shutil
import subprocess
from pathlib import Path

WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
local think = tonumber(os.getenv("THINK_MS") or "0")
if think > 0 then
  function delay() return math.random(0, math.floor(2 * think)) end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %f %f %f %f\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3))
end
"""


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("the serving benchmarks need wrk: apt-get install wrk")


def drive(url: str, body_file: Path, clients: int, seconds: float, rate: float = 0.0,
          content_type: str = "application/x-npy", timeout_s: float | None = None) -> dict:
    """wrk POSTing ``body_file`` to ``url``: closed loop, or paced to about ``rate`` req/s
    (each connection waits a random think time of mean clients / rate). Returns requests,
    status_errors (non-2xx answers), socket_errors, errors (both), rps (answered without
    error) and p50/p95/p99 ms."""
    require_wrk()
    script = body_file.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    env = dict(os.environ, BODY_FILE=str(body_file), CONTENT_TYPE=content_type,
               THINK_MS=str(1000 * clients / rate if rate else 0))
    timeout = ["--timeout", f"{timeout_s:g}s"] if timeout_s else []
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", *timeout, "-s",
                          str(script), url], capture_output=True, text=True, check=True,
                         env=env).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    n, status, sock, elapsed, p50, p95, p99 = (float(v) for v in line.split()[1:])
    return {"requests": int(n), "status_errors": int(status), "socket_errors": int(sock),
            "errors": int(status + sock), "rps": (n - status - sock) / elapsed,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99}
