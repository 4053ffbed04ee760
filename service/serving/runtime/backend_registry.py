"""Backends by name (``Settings.backend``, ``service.manifest.BACKENDS``).

Adding a backend: one module with a class like ``OnnxBackend`` (the ``backend.Backend``
protocol, this constructor signature, a ``visible_gpus`` static method), one entry in
``BACKEND_CLASSES``, and its artifact file names in ``service.manifest.BACKENDS``.
"""

from pathlib import Path

from service.serving.runtime.backend import Backend
from service.serving.runtime.onnx_backend import OnnxBackend
from service.serving.runtime.torchscript_backend import TorchScriptBackend

BACKEND_CLASSES: dict[str, type] = {"onnx": OnnxBackend, "torchscript": TorchScriptBackend}


def make_backend(kind: str, path: Path, input_name: str, output_names: list[str] | None,
                 providers: list[str], threads: int, *, sha256: str) -> Backend:
    """The backend of ``kind`` for the artifact at ``path``, whose manifest sha256 is
    ``sha256`` (checked when it loads)."""
    if kind not in BACKEND_CLASSES:
        raise ValueError(f"unknown backend {kind!r}; known: {sorted(BACKEND_CLASSES)}")
    return BACKEND_CLASSES[kind](path, input_name, output_names, providers, threads,
                                 sha256=sha256)


def visible_gpu_count(kind: str) -> int:
    """GPUs the backend of ``kind`` can use (the ONNX one never imports torch to count)."""
    return BACKEND_CLASSES[kind].visible_gpus()
