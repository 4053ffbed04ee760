"""Deploy fixtures: a private dockerd, a Debian base image made with debootstrap, the CPU
image built on it from a wheelhouse (the air-gapped path: pip inside ``docker build``
reaches no index), and a one-model store the containers and local servers serve.

The daemon and the image live for one test module (test_image.py); the daemon's data root
is a tmpfs, freed as soon as that module is done. Caches, each rebuilt when missing: the
debootstrap root file system as a tarball in ``$DIFFRES_DEPLOY_CACHE`` (default
/tmp/diffres-deploy-cache; debootstrap takes ~40 s), and the wheelhouse in
``build/wheelhouse-cpu`` (git-ignored, inside the build context; ``pip download`` skips
wheels it already has). Docker itself starts empty every run: fresh data root, base image
imported from the tarball, image built without any layer cache.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.deploy.docker_daemon import DockerDaemon
from tests.model_store_builder import export_test_model

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIFFRES_DEPLOY_CACHE", "/tmp/diffres-deploy-cache"))
SUITE = "bookworm"
BASE_TAG = f"local/debian:{SUITE}-minbase"
IMAGE_TAG = "diffres-serve:cpu-test"
WHEELHOUSE = Path("build") / "wheelhouse-cpu"  # relative to ROOT, the build context
FALLBACK_MIRROR = "http://deb.debian.org/debian"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "diffres-serve.json"


@pytest.fixture(scope="session", autouse=True)
def _no_service_settings_from_this_machine():
    """Settings read ``DIFFRES_*`` variables: one exported on this machine (an API key, a
    model store) must not reach the servers these tests start, which get theirs explicitly."""
    from service.config import Settings

    with pytest.MonkeyPatch.context() as patch:
        for name in Settings.model_fields:
            patch.delenv(f"DIFFRES_{name.upper()}", raising=False)
        yield


def require(condition: bool, message: str) -> None:
    """Skip when ``condition`` is false; fail instead under DIFFRES_REQUIRE_SYSTEM_TOOLS=1."""
    if condition:
        return
    if os.environ.get("DIFFRES_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(message + " (DIFFRES_REQUIRE_SYSTEM_TOOLS=1)")
    pytest.skip(message)


def require_module(name: str) -> None:
    import importlib.util

    require(importlib.util.find_spec(name) is not None,
            f"Python package {name!r} is not installed (pip install -e '.[dev]')")


def debian_mirror() -> str:
    """The Debian archive apt uses on this machine (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for uri in re.findall(r"^URIs:\s*(\S+)", path.read_text(), flags=re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    one_line = Path("/etc/apt/sources.list")
    if one_line.exists():
        for uri in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", one_line.read_text(), re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return FALLBACK_MIRROR


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the Grafana dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock (for concurrent test runs sharing a cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def debian_rootfs_tar() -> Path:
    """A tarball of ``debootstrap --variant=minbase`` Debian, made once and cached."""
    tar = CACHE / f"debian-{SUITE}-minbase.tar"
    with locked(CACHE / "rootfs.lock"):
        if tar.exists():
            return tar
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
        try:
            subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs),
                            debian_mirror()], check=True, capture_output=True, timeout=900)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            subprocess.run(["tar", "-C", str(rootfs), "-cf", f"{tar}.part", "."], check=True,
                           timeout=300)
            os.replace(f"{tar}.part", tar)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    return tar


@dataclass
class BuiltImage:
    tag: str
    seconds: float
    log: str


@pytest.fixture(scope="module")
def docker_daemon():
    require(os.geteuid() == 0, "dockerd and debootstrap need root")
    daemon = DockerDaemon(require_tool("dockerd"), require_tool("docker"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def debian_base_image(docker_daemon) -> str:
    require_tool("debootstrap")
    with open(debian_rootfs_tar(), "rb") as tar:
        docker_daemon.docker("import", "-", BASE_TAG, stdin=tar, timeout=300)
    return BASE_TAG


@pytest.fixture(scope="session")
def cpu_wheelhouse() -> Path:
    """Binary wheels of the CPU image's requirements for Debian bookworm's Python."""
    with locked(ROOT / "build" / "wheelhouse.lock"):
        result = subprocess.run([sys.executable, str(ROOT / "deploy" / "image_requirements.py"),
                                 "download", "--variant", "cpu", "--dest", str(ROOT / WHEELHOUSE)],
                                capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return WHEELHOUSE


@pytest.fixture(scope="module")
def cpu_image(docker_daemon, debian_base_image, cpu_wheelhouse) -> BuiltImage:
    """The CPU image, built offline (pip from the wheelhouse) on the debootstrap base."""
    started = time.monotonic()
    result = docker_daemon.docker(
        "build", "--network", "host", "-t", IMAGE_TAG, "--build-arg", "VARIANT=cpu",
        "--build-arg", f"BASE_IMAGE={debian_base_image}",
        "--build-arg", f"WHEELHOUSE={cpu_wheelhouse}", str(ROOT), timeout=1200)
    return BuiltImage(IMAGE_TAG, time.monotonic() - started, result.stdout + result.stderr)


@pytest.fixture(scope="session")
def deploy_model_store():
    """kws12-diffres/1 (untrained DiffRes) in a directory any user can read, since the
    container runs as an unprivileged user."""
    root = Path(tempfile.mkdtemp(prefix="diffres-store-"))
    try:
        export_test_model("diffres", root / "kws12-diffres" / "1", "kws12-diffres", seed=0)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
