"""What a model directory promises: ``model_store/<name>/<version>/manifest.json``.

Written by the export tools, read by the model store. Pure pydantic: no torch, no HTTP.
"""

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1


class FrontendSpec(BaseModel):
    """Log-mel front end; its output is natural-log mel power, floored at ``log_floor``."""

    sample_rate: int = Field(16000, gt=0)
    n_fft: int = Field(400, gt=0)
    win_length: int = Field(400, gt=0)
    hop_length: int = Field(160, gt=0)
    n_mels: int = Field(40, gt=0)
    f_min: float = Field(20.0, ge=0)
    f_max: float = Field(8000.0, gt=0)
    mel_scale: Literal["htk", "slaney"] = "htk"
    log_floor: float = Field(1e-6, gt=0)

    @property
    def frame_hop_seconds(self) -> float:
        return self.hop_length / self.sample_rate


class CompressorSpec(BaseModel):
    """The temporal compression in front of the classifier."""

    kind: Literal["diffres", "avgpool", "avgmaxpool", "convavgpool", "changehopsize", "full"]
    in_t_dim: int = Field(gt=0)
    in_f_dim: int = Field(gt=0)
    dimension_reduction_rate: float = Field(0.0, ge=0, lt=1)
    out_t_dim: int = Field(gt=0)


class TensorSpec(BaseModel):
    name: str
    shape: list[int]  # -1 for a variable dimension
    dtype: str = "float32"


class Artifact(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(gt=0)
    labels: list[str]
    frontend: FrontendSpec
    compressor: CompressorSpec
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    frontend_inputs: list[TensorSpec] = []
    frontend_outputs: list[TensorSpec] = []
    # file name (model.onnx, model.pt, frontend.onnx, frontend.pt) -> checksum
    artifacts: dict[str, Artifact]
    metrics: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    training: dict[str, Any] = {}

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        return cls.model_validate_json((Path(directory) / MANIFEST_FILE).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_artifact(path: Path) -> Artifact:
    return Artifact(sha256=sha256_file(path), bytes=Path(path).stat().st_size)


def verify_artifacts(directory: Path, manifest: Manifest) -> list[str]:
    """Problems found (missing files, checksum mismatches); empty when all is well."""
    problems = []
    for name, expected in manifest.artifacts.items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (actual := sha256_file(path)) != expected.sha256:
            problems.append(f"{name}: sha256 {actual[:12]}... does not match manifest "
                            f"{expected.sha256[:12]}...")
    return problems
