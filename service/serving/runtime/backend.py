"""What a backend is: ``load(device)`` then ``run(batch)`` on one artifact, one instance per
worker. Implementations: ``onnx_backend``, ``torchscript_backend``; ``backend_registry``
picks one by name.

Nothing is loaded that the manifest did not promise: ``load`` reads the artifact's bytes once,
checks their sha256 against the manifest's, and builds the session or module from those same
bytes (no second read a swapped file could slip into). Neither loader unpickles Python
objects: ONNX is protobuf, and ``torch.jit.load`` reads TorchScript archives with its own
restricted loader (no ``torch.load``, whose default can run arbitrary pickles).
"""

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np


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
