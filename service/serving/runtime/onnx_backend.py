"""ONNX Runtime backend: providers in the configured order (CUDA before CPU), unavailable
ones skipped; the session is built from the verified bytes the manifest promised."""

import shutil
import subprocess
from pathlib import Path

import numpy as np

from service.errors import InferenceFailed
from service.serving.runtime.backend import cuda_index, read_verified


class OnnxBackend:
    name = "onnx"

    @staticmethod
    def visible_gpus() -> int:
        """GPUs ONNX Runtime can use: none without its CUDA provider, else nvidia-smi's
        count (1 when it cannot be asked)."""
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return 0
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return 1
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return 1
        return sum(line.startswith("GPU ") for line in out.splitlines())

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
