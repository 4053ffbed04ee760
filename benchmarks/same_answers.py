"""Do two checkouts of the service answer the shipped models byte for byte alike?

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/same_answers.py --before /tmp/before

Starts ``python -m service serve`` from each checkout in turn (same venv, same model store,
``version_policy=all``), sends every shipped model version the same inputs (a 2.3 s WAV of
the export check clip, so the last window is padded, and a 250-frame .npy spectrogram) on
/classify and /compress, and prints for each whether the response bodies are identical.
Exit status 1 when any differs. For refactors that must not change an answer.
"""

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.export.check_audio import load  # noqa: E402
from service.manifest import Manifest  # noqa: E402


def inputs() -> dict[str, dict]:
    wave = load(16000)[: int(2.3 * 16000)]
    wav = io.BytesIO()
    sf.write(wav, wave, 16000, format="WAV", subtype="FLOAT")
    npy = io.BytesIO()
    np.save(npy, np.random.default_rng(0).normal(-6, 2, (250, 40)).astype(np.float32))
    return {"wav": {"files": {"file": ("a.wav", wav.getvalue())}},
            "npy": {"content": npy.getvalue(),
                    "headers": {"Content-Type": "application/x-npy"}}}


def answers(checkout: Path, store: Path, port: int) -> dict[str, bytes]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "DIFFRES_MODEL_STORE": str(store),
           "DIFFRES_VERSION_POLICY": "all"}
    server = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)],
                              cwd=checkout, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        out = {}
        for directory in sorted(store.glob("*/*")):
            manifest = Manifest.read(directory)
            for endpoint in ("classify", "compress"):
                for kind, request in inputs().items():
                    if kind == "npy" and manifest.frontend.n_mels != 40:
                        continue
                    url = (f"{base}/{endpoint}?model={manifest.name}&version="
                           f"{manifest.version}")
                    out[f"{manifest.name}/{manifest.version} {endpoint} {kind}"] = httpx.post(
                        url, timeout=120, **request).content
        return out
    finally:
        server.terminate()
        server.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--port", type=int, default=8131)
    args = parser.parse_args()
    before = answers(args.before.resolve(), args.store.resolve(), args.port)
    after = answers(args.after.resolve(), args.store.resolve(), args.port + 1)
    differ = 0
    for key, body in before.items():
        same = after.get(key) == body
        differ += not same
        print(f"{key}: {'identical' if same else 'DIFFERENT'} ({len(body)} bytes)")
    print(f"{len(before) - differ} of {len(before)} responses identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
