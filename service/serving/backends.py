"""Backends run one array through one artifact: ``load(device)`` then ``run(batch)``.

``OnnxBackend`` uses ONNX Runtime (providers in the configured order, CUDA before CPU,
unavailable ones skipped). ``TorchScriptBackend`` imports torch only inside ``load``, so
the ONNX serving path never imports torch. A backend instance belongs to one worker.

Nothing is loaded that the manifest did not promise: ``load`` reads the artifact's bytes once,
checks their sha256 against the manifest's, and builds the session or module from those same
bytes (no second read a swapped file could slip into). Neither loader unpickles Python
objects: ONNX is protobuf, and ``torch.jit.load`` reads TorchScript archives with its own
restricted loader (no ``torch.load``, whose default can run arbitrary pickles).
"""

import hashlib
import io
from pathlib import Path
from typing import Protocol

import numpy as np

from service.errors import InferenceFailed


class Backend(Protocol):
    name: str
    device: str

    def load(self, device: str) -> None: ...

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of ``path`` if their sha256 is ``sha256``; else ``ValueError``."""
    data = Path(path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"{Path(path).name}: sha256 {actual[:12]}... does not match the "
                         f"manifest's {sha256[:12]}...; refusing to load it")
    return data


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, input_name: str, output_names: list[str] | None,
                 providers: list[str], threads: int = 1, *, sha256: str) -> None:
        self.path, self.input_name, self.output_names = Path(path), input_name, output_names
        self.providers, self.threads, self.sha256 = providers, threads, sha256
        self.device = "unloaded"
        self._session = None

    def load(self, device: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(read_verified(self.path, self.sha256),
                                             sess_options=options,
                                             providers=self._providers(device, ort))
        if self.output_names is None:
            self.output_names = [o.name for o in self._session.get_outputs()]
        self.device = device

    def _providers(self, device: str, ort) -> list:
        available = set(ort.get_available_providers())
        chosen: list = []
        for provider in self.providers:
            if provider not in available:
                continue
            if provider == "CUDAExecutionProvider":
                if device.startswith("cuda"):
                    chosen.append((provider, {"device_id": cuda_index(device)}))
            elif provider == "CPUExecutionProvider" or device == "cpu":
                chosen.append(provider)
        return chosen or ["CPUExecutionProvider"]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._session is None:
            raise InferenceFailed(f"{self.path.name}: backend not loaded")
        outputs = self._session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outputs, strict=True))

    def close(self) -> None:
        self._session = None


class TorchScriptBackend:
    name = "torchscript"

    def __init__(self, path: Path, input_name: str, output_names: list[str] | None,
                 threads: int = 1, *, sha256: str) -> None:
        self.path, self.input_name, self.output_names = Path(path), input_name, output_names
        self.output_names = output_names or ["output"]
        self.threads, self.sha256 = threads, sha256
        self.device = "unloaded"
        self._module = None

    def load(self, device: str) -> None:
        import torch  # lazy: only this backend needs torch

        if device == "cpu" and torch.get_num_threads() > self.threads:
            torch.set_num_threads(self.threads)  # process-wide in torch; first worker wins
        data = io.BytesIO(read_verified(self.path, self.sha256))
        self._module = torch.jit.load(data, map_location=device).eval()
        self.device = device

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        if self._module is None:
            raise InferenceFailed(f"{self.path.name}: backend not loaded")
        with torch.inference_mode():
            result = self._module(torch.from_numpy(batch).to(self.device))
        return self._to_numpy(result)

    def _to_numpy(self, result) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            missing = [n for n in self.output_names if n not in result]
            if missing:
                raise InferenceFailed(f"{self.path.name}: outputs {missing} missing")
            tensors = [result[n] for n in self.output_names]
        elif isinstance(result, (tuple, list)):
            tensors = list(result)[: len(self.output_names)]
        else:
            tensors = [result]
        if len(tensors) != len(self.output_names):
            raise InferenceFailed(f"{self.path.name}: {len(tensors)} outputs, expected "
                                  f"{len(self.output_names)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, tensors,
                                                             strict=True)}

    def close(self) -> None:
        self._module = None


def make_backend(kind: str, path: Path, input_name: str, output_names: list[str] | None,
                 providers: list[str], threads: int, *, sha256: str) -> Backend:
    """The backend of ``kind`` for the artifact at ``path``, whose manifest sha256 is
    ``sha256`` (checked when it loads)."""
    if kind == "onnx":
        return OnnxBackend(path, input_name, output_names, providers, threads, sha256=sha256)
    if kind == "torchscript":
        return TorchScriptBackend(path, input_name, output_names, threads, sha256=sha256)
    raise ValueError(f"unknown backend {kind!r}")
