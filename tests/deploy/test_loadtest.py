"""``python -m load_tests.run --start-server``: a 20 s headless Locust run of every user
class against a local server ends with zero failures, a report, a plot and a clean stop."""

import json
import subprocess
import sys
from pathlib import Path

from load_tests.report import read_history
from tests.deploy.conftest import require_module

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"/classify wav 1s", "/classify wav 10s", "/classify spectrogram", "/compress wav 1s"}


def test_headless_locust_run_has_no_failures(deploy_model_store, tmp_path):
    require_module("locust")
    out = tmp_path / "loadtest"
    command = [sys.executable, "-m", "load_tests.run", "--start-server",
               "--model-store", str(deploy_model_store), "--server-args", "--devices cpu",
               "--users", "4", "--spawn-rate", "4", "--duration", "20", "--out", str(out),
               "--mix", "wav1=1,wav10=1,spectrogram=1,compress=1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print("\n" + result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    stats = {row["name"]: row for row in summary["stats"]}
    assert set(stats) == NAMES | {"Aggregated"}
    assert all(row["requests"] > 0 and row["failures"] == 0 for row in stats.values()), stats
    assert summary["server_exit_code"] == 0
    server = summary["server"]
    assert server["requests"] >= stats["Aggregated"]["requests"]
    assert 0 < server["compression"] < 1  # DiffRes at rate 0.5 keeps about half the frames
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = read_history(out / "locust")
    assert len(history["t"]) >= 10 and max(history["rps"]) > 0
