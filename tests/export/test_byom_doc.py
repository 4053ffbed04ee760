"""docs/BRING_YOUR_OWN_MODEL.md runs as written: its files are extracted from the page, its
shell block trains, exports, serves and queries a model of the user's own."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "BRING_YOUR_OWN_MODEL.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == kind]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_example_runs_as_written(tmp_path):
    require_tool("curl")
    files = {body.splitlines()[0].removeprefix("# file: "): body
             for body in blocks("python") if body.startswith("# file: ")}
    assert set(files) == {"my_model.py", "train.py", "make_inputs.py"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (script,) = [b for b in blocks("bash") if b.startswith("python train.py")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(3):  # the port is picked before the server binds it: retry if taken since
        env["PORT"] = str(unused_port())
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        if "address already in use" not in run.stderr:
            break
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "exported my_store/my-diffres/1: frontend.onnx, frontend.pt, model.onnx, model.pt" in out
    assert "window 301 frames x 64 bands at 32000 Hz, diffres to 120 frames" in out
    answers = re.findall(r"^my-diffres \{'label': '(\w+)'", out, re.M)
    assert len(answers) == 2 and answers[0] == answers[1]  # the clip, and its .npy
    assert answers[0] in ("tone", "chirp", "noise")
    assert re.search(r"^401 -> \d+ frames$", out, re.M)  # /compress: 4 s of 10 ms frames
