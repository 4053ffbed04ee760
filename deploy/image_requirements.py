"""What the serving image installs with pip, read from pyproject.toml (one source of truth
for the Dockerfile and for the air-gapped wheelhouse). Standard library only: it runs with
the image's system python3 (3.11+ for tomllib) before any package is installed.

    python3 deploy/image_requirements.py print --variant cpu|gpu
    python3 deploy/image_requirements.py download --variant cpu|gpu --dest wheelhouse \\
        [--python-version X.Y] [--glibc 2.N] [--torch torch==2.13.0]

``print``: pip requirement lines. cpu: the project's dependencies (onnxruntime, no torch);
gpu: the same with onnxruntime-gpu instead of onnxruntime. Both add the build-system
requirements (setuptools) so that ``pip install --no-deps --no-build-isolation .`` needs no
index. torch is not in the list: the Dockerfile installs it on its own (TORCH_SPEC,
optionally from TORCH_INDEX_URL).

``download``: ``pip download`` of those requirements (plus ``--torch`` for gpu) as binary
wheels for the image's Python and glibc into ``--dest`` (defaults: the default base of the
variant, ``VARIANT_SYSTEM``). Run it with a pip that reaches
an index; the image build then installs from that directory with ``--no-index``.
"""

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
GPU_SWAP = {"onnxruntime": "onnxruntime-gpu"}
MANYLINUX_MIN = 17  # manylinux2014 == manylinux_2_17
# (python, glibc) of the default base per variant: Debian bookworm, CUDA's Ubuntu 24.04.
VARIANT_SYSTEM = {"cpu": ("3.11", "2.36"), "gpu": ("3.12", "2.39")}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def requirements(variant: str, pyproject: Path = PYPROJECT) -> list[str]:
    """Requirement lines for ``variant`` ("cpu" or "gpu"), build requirements first."""
    data = tomllib.loads(pyproject.read_text())
    lines = list(data["build-system"]["requires"])
    for requirement in data["project"]["dependencies"]:
        name = _name(requirement)
        if variant == "gpu" and name in GPU_SWAP:
            requirement = GPU_SWAP[name] + requirement[len(name):]
        lines.append(requirement)
    return lines


def platforms(glibc: str, arch: str = "x86_64") -> list[str]:
    """Every manylinux tag a system with ``glibc`` (e.g. "2.36") accepts. pip's --platform
    takes tags literally, so older ones must be listed too."""
    major, minor = (int(part) for part in glibc.split("."))
    if major != 2 or minor < MANYLINUX_MIN:
        raise ValueError(f"unsupported glibc {glibc}")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    return tags + [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def download(variant: str, dest: Path, python_version: str, glibc: str,
             torch: str | None) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = requirements(variant) + ([torch] if variant == "gpu" and torch else [])
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest),
               "--only-binary=:all:", "--python-version", python_version]
    for tag in platforms(glibc):
        command += ["--platform", tag]
    return subprocess.run(command + wanted).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("print", help="print the requirement lines")
    show.add_argument("--variant", choices=["cpu", "gpu"], default="cpu")
    get = commands.add_parser("download", help="download the wheels into --dest")
    get.add_argument("--variant", choices=["cpu", "gpu"], default="cpu")
    get.add_argument("--dest", type=Path, required=True)
    get.add_argument("--python-version", help="default: the variant's base (VARIANT_SYSTEM)")
    get.add_argument("--glibc", help="default: the variant's base (VARIANT_SYSTEM)")
    get.add_argument("--torch", default="torch==2.13.0",
                     help="gpu only: the torch requirement ('' for an image without torch)")
    args = parser.parse_args(argv)
    if args.command == "print":
        print("\n".join(requirements(args.variant)))
        return 0
    python_version, glibc = VARIANT_SYSTEM[args.variant]
    return download(args.variant, args.dest, args.python_version or python_version,
                    args.glibc or glibc, args.torch)


if __name__ == "__main__":
    sys.exit(main())
