"""LitServe 0.2.19 serving one of our model directories the way our /classify serves it,
for ``benchmarks/peer_litserve.py``. Runs under the peer venv's python (LitServe pins its
own FastAPI), never imports ``service``:

    build/peer-venv/bin/python benchmarks/peer/litserve_server.py --config peer.json --port 8123

``--config`` is JSON written by the driver from our manifest (model_dir, labels,
window_frames, n_mels, sample_rate, pad_value [per band], threads, max_batch_size,
batch_timeout_s), so both servers read the same ONNX files with the same window and padding.

POST /classify takes what ours takes for these benchmarks: multipart/form-data with a WAV in
the field ``file`` (decoded with soundfile, channels averaged, resampled with soxr HQ), or an
``application/x-npy`` body holding a float32 [T, n_mels] log-mel. Audio goes through
frontend.onnx; the spectrogram is cropped, or padded with the front end's silence value, to
one model window; windows are stacked into [B, T, F] for model.onnx. Answers
``{"probabilities": {label: p}}``.

LitServe hands ``decode_request`` the parsed form or JSON unless its ``request`` parameter is
annotated otherwise; a raw .npy body is neither, so the annotation is a FastAPI dependency
that reads the body in the API server process and passes picklable bytes to the inference
worker (the form is parsed there too, as LitServe parses one).
"""

import argparse
import io
import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
import onnxruntime as ort
import soundfile as sf
import soxr
from fastapi import Depends, HTTPException, Request
from starlette.datastructures import UploadFile

NPY_TYPES = {"application/x-npy", "application/npy"}


async def read_body(request: Request) -> dict[str, Any]:
    """The request as {"kind": "audio" | "npy", "data": bytes}: what crosses LitServe's
    queue to the inference worker (a starlette UploadFile would not pickle)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "multipart body needs a file field named 'file'")
            return {"kind": "audio", "data": await upload.read()}
        finally:
            await form.close()
    if ctype in NPY_TYPES:
        return {"kind": "npy", "data": await request.body()}
    raise HTTPException(415, f"unsupported content type {ctype!r}")


Body = Annotated[dict, Depends(read_body)]


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session set up as our ONNX backend sets up its own."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


class ClassifierAPI(ls.LitAPI):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(max_batch_size=config["max_batch_size"],
                         batch_timeout=config["batch_timeout_s"], api_path="/classify")
        self.config = config

    def setup(self, device: str) -> None:
        c = self.config
        model_dir = Path(c["model_dir"])
        self.labels: list[str] = c["labels"]
        self.frames, self.n_mels, self.rate = c["window_frames"], c["n_mels"], c["sample_rate"]
        self.pad = np.asarray(c["pad_value"], np.float32)
        # Our server runs its front end on one thread, the model on ``threads``.
        self.frontend = session(model_dir / "frontend.onnx", 1)
        self.model = session(model_dir / "model.onnx", c["threads"])
        self.frontend_input = self.frontend.get_inputs()[0].name
        self.model_input = self.model.get_inputs()[0].name

    def decode_request(self, request: Body) -> np.ndarray:
        spec = self.log_mel(request["data"]) if request["kind"] == "audio" else (
            self.spectrogram(request["data"]))
        return self.window(spec)

    def log_mel(self, data: bytes) -> np.ndarray:
        """WAV bytes -> [T, n_mels] through frontend.onnx, as our data plane decodes."""
        try:
            wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as exc:
            raise HTTPException(415, f"cannot decode audio: {exc}") from exc
        mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
        if rate != self.rate:
            mono = soxr.resample(mono, rate, self.rate, quality="HQ")
        mono = np.ascontiguousarray(mono, np.float32)
        return self.frontend.run(None, {self.frontend_input: mono[np.newaxis]})[0][0]

    def spectrogram(self, data: bytes) -> np.ndarray:
        try:
            spec = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise HTTPException(415, f"body is not a readable .npy file: {exc}") from exc
        if spec.ndim != 2 or spec.shape[1] != self.n_mels:
            raise HTTPException(422, f"spectrogram must be [T, {self.n_mels}], got "
                                f"{list(spec.shape)}")
        return spec.astype(np.float32, copy=False)

    def window(self, spec: np.ndarray) -> np.ndarray:
        """Crop to one window, or pad the missing frames with the silence value per band,
        as our server pads its last window."""
        window = np.empty((self.frames, self.n_mels), np.float32)
        window[:] = self.pad
        used = min(len(spec), self.frames)
        window[:used] = spec[:used]
        return window

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(["probabilities"], {self.model_input: x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"probabilities": dict(zip(self.labels, map(float, output), strict=True))}


def stop_on_sigterm() -> None:
    """SIGTERM (what the driver sends) shuts LitServe down as Ctrl+C does; SIGINT too, even
    when started from a shell that ignores it for background jobs. The forked API server
    inherits the handler and uvicorn re-raises the signal into it once it has drained: there
    it just exits."""
    main_pid = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            raise SystemExit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    stop_on_sigterm()
    server = ls.LitServer(ClassifierAPI(config), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level=args.log_level,
               generate_client_file=False)


if __name__ == "__main__":  # the inference worker is spawned: it re-imports this module
    main()
