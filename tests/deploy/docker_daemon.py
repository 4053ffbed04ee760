"""A private Docker daemon for the image tests, changing nothing on the host network.

``dockerd`` runs with no bridge, no iptables rules, no IP forwarding or masquerading, its
own config file, data root (on a tmpfs), exec root (its own containerd), socket and pid
file, all under one temporary directory that ``stop()`` removes. Containers and builds use
``--network host`` (or ``none``). The client talks to it through ``DOCKER_HOST`` with the
legacy builder (``DOCKER_BUILDKIT=0``), which every docker client version has.

    daemon = DockerDaemon(dockerd, docker); daemon.start()
    daemon.docker("images")
    daemon.stop()
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

TMPFS_SIZE = "8g"  # upper bound, not a reservation: the CPU image build peaks near 1.5 GB


class DockerDaemon:
    def __init__(self, dockerd: str, docker: str) -> None:
        self.dockerd, self.client = dockerd, docker
        self.root = Path(tempfile.mkdtemp(prefix="diffres-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.env = os.environ | {"DOCKER_HOST": f"unix://{self.socket}",
                                 "DOCKER_BUILDKIT": "0",
                                 "DOCKER_CONFIG": str(self.root / "client")}

    def start(self, timeout: float = 60.0) -> None:
        (self.root / "daemon.json").write_text("{}")
        self._mount_tmpfs(self.root / "data")
        command = [self.dockerd, "--bridge=none", "--iptables=false", "--ip-forward=false",
                   "--ip-masq=false", "--config-file", str(self.root / "daemon.json"),
                   "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.root / "exec"),
                   "--pidfile", str(self.root / "dockerd.pid"),
                   "-H", f"unix://{self.socket}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.tail()}")
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"dockerd did not answer within {timeout:.0f} s:\n{self.tail()}")

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0,
               stdin=None) -> subprocess.CompletedProcess:
        """Run the docker client against this daemon (``stdin``: a file to feed it); the
        output is decoded to text."""
        result = subprocess.run([self.client, *args], env=self.env, capture_output=True,
                                timeout=timeout, stdin=stdin)
        result.stdout = result.stdout.decode(errors="replace")
        result.stderr = result.stderr.decode(errors="replace")
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} exited with {result.returncode}:\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def stop(self, timeout: float = 30.0) -> None:
        """Remove every container, stop dockerd (and its containerd), delete its directory."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=60)
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: dockerd's group
                    self.proc.wait(10)
                    self._kill_containerd()
        finally:
            self.proc = None
            self._unmount_leftovers()
            shutil.rmtree(self.root, ignore_errors=True)

    def _mount_tmpfs(self, path: Path) -> None:
        """Images and layers in memory when possible: a build leaves thousands of small
        files, and deleting them from disk afterwards can take a minute; a tmpfs goes at
        once. (Plain directory if the mount is refused.)"""
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0710",
                        "diffres-dockerd", str(path)], capture_output=True, timeout=30)

    def _kill_containerd(self) -> None:
        """The containerd that dockerd started, should dockerd have died without it."""
        pid_file = self.root / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)

    def _unmount_leftovers(self) -> None:
        """Lazily unmount anything still mounted under the daemon's directory (innermost
        first), so that removing it cannot fail or reach into a mounted filesystem."""
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for point in sorted((p for p in points if p.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
