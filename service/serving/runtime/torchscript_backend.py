"""TorchScript backend: the one module of ``service.serving`` that imports torch, and only
inside ``load``/``run``, so the ONNX serving path never imports it. ``torch.jit.load`` reads
the archive with its own restricted loader (no pickles)."""

import io
from pathlib import Path

import numpy as np

from service.errors import InferenceFailed
from service.serving.runtime.backend import read_verified


class TorchScriptBackend:
    name = "torchscript"

    @staticmethod
    def visible_gpus() -> int:
        import torch

        return torch.cuda.device_count()

    def __init__(self, path: Path, input_name: str, output_names: list[str] | None,
                 providers: list[str] | None = None, threads: int = 1, *, sha256: str) -> None:
        # ``providers`` is ONNX Runtime's; accepted so every backend has one signature
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
