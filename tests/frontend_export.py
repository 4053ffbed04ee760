"""The export checks every front end's tests run: ONNX and TorchScript against eager."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.export import export_onnx


def export_front_end(module: nn.Module, example: torch.Tensor, directory: Path
                     ) -> tuple[Path, torch.jit.ScriptModule, ort.InferenceSession]:
    """``module`` exported to ONNX (dynamic batch and samples) and scripted."""
    path = directory / "frontend.onnx"
    export_onnx(module, example, path, ["waveform"], ["features"],
                {"waveform": {0: "batch", 1: "samples"}, "features": {0: "batch", 1: "frames"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return path, torch.jit.script(module), session


def assert_exports_match(module: nn.Module, scripted: torch.jit.ScriptModule,
                         session: ort.InferenceSession, wave: torch.Tensor,
                         onnx_atol: float) -> None:
    eager = module(wave)
    torch.testing.assert_close(scripted(wave), eager, rtol=0, atol=1e-4)
    (onnx_out,) = session.run(None, {"waveform": wave.numpy()})
    assert onnx_out.shape == tuple(eager.shape)
    np.testing.assert_allclose(onnx_out, eager.numpy(), rtol=0, atol=onnx_atol)
