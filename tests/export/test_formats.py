"""Exporter failures name what to change, and exporter chatter stays out of the terminal."""

import logging

import pytest
import torch
from torch import Tensor, nn

from service.errors import ExportError, UnsupportedOperator
from service.export import export_onnx, export_torchscript
from tests.export.conftest import StarArgsCNN


class Histogram(nn.Module):
    """torch.histc has no ONNX export in either exporter."""

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.histc(x, bins=4).sum()


class Spectrum(nn.Module):
    """torch.fft.rfft: the TorchScript-based exporter fails, the dynamo fallback succeeds (and
    prints hundreds of lines while it does)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.fft.rfft(x, dim=-1).abs()


def _onnx(module: nn.Module, path) -> None:
    export_onnx(module, torch.randn(2, 8), path, ["x"], ["y"], {"x": {0: "batch"},
                                                                "y": {0: "batch"}})


def test_an_operator_without_export_is_named_with_its_module(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), Histogram())
    with pytest.raises(UnsupportedOperator) as info:
        _onnx(model, tmp_path / "m.onnx")
    message = str(info.value)
    assert "aten::histc" in message and "called in 1 (Histogram)" in message
    assert "--formats torchscript" in message


def test_exporter_output_goes_to_the_log_not_the_terminal(tmp_path, capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="service.export"):
        _onnx(Spectrum(), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert any("lines of exporter output" in r.getMessage() for r in caplog.records)
    assert any("trying dynamo" in r.getMessage() for r in caplog.records)


def test_unscriptable_module_suggests_onnx_only(tmp_path):
    with pytest.raises(ExportError, match=r"cannot compile StarArgsCNN.*--formats onnx"):
        export_torchscript(StarArgsCNN(3), torch.randn(1, 3, 4, 4), tmp_path / "m.pt")
