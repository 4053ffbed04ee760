"""The serving contract: what a model directory ``model_store/<name>/<version>/`` holds and
promises, defined once. The exporter writes it, the store, the data plane, the v2 protocol
and the offline predictor read it; every name, file and kind below is imported from here.

Pure pydantic: no torch, no HTTP.
"""

import hashlib
import math
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

MANIFEST_FILE = "manifest.json"
# 2: the front end is described by what serving needs of it (``FrontendInfo``), artifacts
# list only the backends exported, outputs carry their export tolerance. 1 is still read.
SCHEMA_VERSION = 2

# Tensor names. The model graph maps a spectrogram window to the outputs; the front-end graph
# maps a waveform to the spectrogram.
SPECTROGRAM = "spectrogram"
WAVEFORM = "waveform"
FRONTEND_OUTPUT = "log_mel"
# Largest difference a front end's export may show from eager PyTorch, in its own units (1e-2
# is 1 % of power in natural log, 0.2 % in dB): the export check's default, and what the
# server allows its numpy LogMel against the exported file.
FRONTEND_TOLERANCE = 1e-2
PROBABILITIES = "probabilities"
FRAME_SCORES = "frame_scores"
REQUIRED_OUTPUTS = (PROBABILITIES, FRAME_SCORES)
# What POST /compress returns: the compressed feature maps, each [B, t, F].
COMPRESSION_OUTPUTS = ("avgpool", "maxpool", "resolution_enc")

# Labels that mean "no keyword here" (the Speech Commands convention our models follow): the
# clip aggregate treats them as background and never reports them as detections.
UNKNOWN_LABEL, SILENCE_LABEL = "_unknown_", "_silence_"
BACKGROUND_LABELS = frozenset({UNKNOWN_LABEL, SILENCE_LABEL})


class BackendFiles(NamedTuple):
    model: str
    frontend: str


# The backend registry: a backend's name and the two files it runs.
BACKENDS: dict[str, BackendFiles] = {
    "onnx": BackendFiles("model.onnx", "frontend.onnx"),
    "torchscript": BackendFiles("model.pt", "frontend.pt"),
}

# Compressors we wrote; "custom" is any other module that maps [B, T, F] to a feature map.
COMPRESSOR_KINDS = ("diffres", "avgpool", "avgmaxpool", "convavgpool", "changehopsize", "full",
                    "custom")
CompressorKind = Literal["diffres", "avgpool", "avgmaxpool", "convavgpool", "changehopsize",
                         "full", "custom"]

# Spectrogram values a natural-log mel front end can give: >= log(floor) (~ -13.8 at 1e-6)
# and ~ 11 for full-scale audio; 50 would need audio ~1e8 times full scale, and untrained
# models overflow (NaN) from ~70. Below, anything a log with another floor could give.
LOG_MEL_RANGE = (-1000.0, 50.0)


class FrontendSpec(BaseModel):
    """The settings of our ``LogMel`` front end (natural-log mel power, floored at
    ``log_floor``); schema 1 manifests described every front end this way."""

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


class FrontendInfo(BaseModel):
    """What serving needs of the exported front end (``frontend.onnx`` / ``frontend.pt``,
    waveform [B, N] -> spectrogram [B, T, n_mels]), whatever module it was."""

    type: str = Field(description="class of the exported module")
    sample_rate: int = Field(gt=0, description="the rate it expects; audio is resampled to it")
    hop_length: int = Field(gt=0, description="samples between frames")
    n_mels: int = Field(gt=0)
    silence: list[float] = Field(description="its output for digital silence, per band: "
                                 "the pad value of a window that audio does not fill")
    value_range: tuple[float, float] = Field(
        LOG_MEL_RANGE, description="spectrogram values accepted as input; outside, a request "
        "is refused as being in other units")
    params: dict[str, Any] = Field({}, description="its settings, as it describes itself")

    @property
    def frame_hop_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    @classmethod
    def from_log_mel(cls, spec: FrontendSpec) -> "FrontendInfo":
        silence = math.log(spec.log_floor)
        return cls(type="LogMel", sample_rate=spec.sample_rate, hop_length=spec.hop_length,
                   n_mels=spec.n_mels, silence=[silence] * spec.n_mels,
                   params=spec.model_dump())


class CompressorSpec(BaseModel):
    """The temporal compression in front of the classifier."""

    kind: CompressorKind
    in_t_dim: int = Field(gt=0)
    in_f_dim: int = Field(gt=0)
    dimension_reduction_rate: float = Field(0.0, ge=0, lt=1)
    out_t_dim: int = Field(gt=0)


class TensorSpec(BaseModel):
    name: str
    shape: list[int]  # -1 for a variable dimension
    dtype: str = "float32"
    # Largest difference from eager PyTorch the export check allowed (None: not checked).
    tolerance: float | None = None


class Artifact(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(gt=0)
    labels: list[str]
    frontend: FrontendInfo
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

    @property
    def backends(self) -> list[str]:
        """The backends whose two files this version holds."""
        return [name for name, files in BACKENDS.items()
                if files.model in self.artifacts and files.frontend in self.artifacts]

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        return cls.parse(Path(directory, MANIFEST_FILE).read_text())

    @classmethod
    def parse(cls, text: str) -> "Manifest":
        """A manifest of any schema this code knows, as the current one."""
        from pydantic_core import from_json

        data = from_json(text)
        schema = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(schema, int) and schema > SCHEMA_VERSION:
            raise ValueError(f"manifest schema {schema} is newer than this code reads "
                             f"({SCHEMA_VERSION}): upgrade diffres-serve")
        if schema == 1:
            data = _from_schema_1(data)
        return cls.model_validate(data)


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 described the front end by LogMel's settings; the files are unchanged."""
    frontend = FrontendSpec.model_validate(data.get("frontend", {}))
    return {**data, "schema_version": SCHEMA_VERSION,
            "frontend": FrontendInfo.from_log_mel(frontend).model_dump()}


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
