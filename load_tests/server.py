"""A local ``python -m service serve`` in a subprocess, on a loopback port of its own.

    with LocalServer(log_path, env={"DIFFRES_MODEL_STORE": "..."}) as server:
        httpx.get(server.url + "/models")
    server.returncode  # 0 after a clean SIGTERM drain

The server binds port 0 and the kernel picks a free port as it binds; ``port`` and ``url``
are read back from the running process. (A port picked here and bound later by the child
could be taken in between by any other process on a shared machine, which would then answer
our requests.) ``start()`` returns once /readyz answers 200 (raises, with the log's tail,
when the process exits, a model fails to load, or the timeout passes); ``stop()``
sends SIGTERM and waits for the drain, then kills if it must. Standard library only.

No load balancer routes to a local server, so it runs without the drain's grace period
(``DIFFRES_DRAIN_GRACE_S=0``, see docs/API.md): ``stop()`` does not wait seconds for nobody.
``env`` (or the environment) can set one.
"""

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV = {"DIFFRES_DRAIN_GRACE_S": "0"}  # under the environment and ``env``


_STARTED = re.compile(rb"Uvicorn running on https?://[^\s:]+:(\d+)")


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants, from /proc (Linux; ``[root]`` where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` or one of its descendants is listening on (serving
    processes listen on sockets of their own), read from /proc (Linux); empty when they
    listen on none yet, or where there is no /proc."""
    inodes = set()
    for member in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the inode
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is localhost or a loopback address (127.0.0.0/8, ::1)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def failed_models(url: str) -> list[str]:
    """``name/version: reason`` of every model version the server failed to load."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
            models = json.load(response)["models"]
    except (OSError, ValueError, KeyError):
        return []
    return [f"{m['name']}/{m['version']}: {m.get('reason')}" for m in models
            if m.get("state") == "failed"]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of GET ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class LocalServer:
    def __init__(self, log_path: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None, ready_timeout: float = 120.0,
                 python: str = sys.executable) -> None:
        self.log_path, self.env, self.args = Path(log_path), env or {}, args or []
        self.ready_timeout, self.python = ready_timeout, python
        self.port: int | None = None  # known once the server listens
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._log_start = 0  # where this run's lines begin in the (appended) log

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not listening yet: start() it first")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.spawn()
        self._wait_ready()
        return self.url

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = None
        command = [self.python, "-m", "service", "serve", "--host", "127.0.0.1",
                   "--port", "0", *self.args]
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            env = DEFAULT_ENV | os.environ | self.env
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        give_up = time.monotonic() + self.ready_timeout
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            if self.port is None:
                self.port = self._bound_port()
                if self.port is None:  # still loading the app, not listening yet
                    time.sleep(0.2)
                    continue
            status = http_status(self.url + "/readyz")
            if status == 200:
                return
            failed = failed_models(self.url) if status is not None else []
            if failed:
                self.stop()
                raise RuntimeError("the server failed to load: " + "; ".join(failed))
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready within {self.ready_timeout:.0f} s:\n{self.tail()}")

    def _bound_port(self) -> int | None:
        """The port the process listens on: from /proc where there is one (whatever the log
        level), else from uvicorn's "running on" line in this run's part of the log."""
        ports = listening_ports(self.proc.pid)
        if ports:
            return min(ports)
        if self.log_path.exists():
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                if match := _STARTED.search(log.read()):
                    return int(match[1])
        return None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` for the drain, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.returncode, self.proc = self.proc.returncode, None
        return self.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> "LocalServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
