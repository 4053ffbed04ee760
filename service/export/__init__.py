"""Export a front end, a compressor and a classifier to a model directory the server loads.

``export_model_dir`` (any ``nn.Module``s, ours or a user's) and ``python -m service export``
(the same from a factory function) write ``model.onnx`` / ``model.pt`` (spectrogram window
-> outputs), ``frontend.onnx`` / ``frontend.pt`` (waveform -> spectrogram) and
``manifest.json``, each file checked against the eager modules first. See
docs/BRING_YOUR_OWN_MODEL.md.

The names below load on first use: ``python -m service`` imports ``service.export.cli`` to
list its commands, also in the serving image, which has no torch.
"""

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_TOLERANCES": "service.export.checks",
    "noise_waveforms": "service.export.checks",
    "OPSET": "service.export.formats",
    "Runner": "service.export.formats",
    "export_onnx": "service.export.formats",
    "export_torchscript": "service.export.formats",
    "onnx_runner": "service.export.formats",
    "torchscript_runner": "service.export.formats",
    "dry_run": "service.export.model_dir",
    "export_model_dir": "service.export.model_dir",
    "ExportCheckError": "service.errors",
    "ExportError": "service.errors",
    "InvalidModel": "service.errors",
    "UnsupportedOperator": "service.errors",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
