"""One training run's settings: what the CLI parses and what checkpoints and result.json record.

The front end is derived from the config, not stored beside it, so a run directory alone is
enough to rebuild its model (see ``service.train.model``).
"""

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.manifest import COMPRESSOR_KINDS

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # 1 s clips
# Fields that say where a run reads and writes and how fast it goes, not what it learns: a
# resume may change them, and twin runs (one dataset against another) differ only in them.
PLACE_AND_SPEED_FIELDS = frozenset({"threads", "device", "eval_batch_size", "out", "data"})
WINDOW_MS = 25.0  # n_fft = win_length = 400 at 16 kHz, whatever the hop
# The compressors we train: every kind of the serving contract but a user's "custom" one.
COMPRESSORS = tuple(kind for kind in COMPRESSOR_KINDS if kind != "custom")
CONFIG_FILE = "config.json"
# "cnn": the compact service.classifier.Classifier (~8 MFLOPs); "bcresnet": service.bcresnet's
# BC-ResNet (66 MFLOPs at full resolution and width 40), big enough for DiffRes to pay off.
# The CLI's --width defaults to each one's own width; the dataclass keeps 32 for old runs.
CLASSIFIERS = ("cnn", "bcresnet")
DEFAULT_WIDTHS = {"cnn": 32, "bcresnet": 40}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's numbers (``threads`` and ``device`` only its speed)."""

    data: str
    out: str
    compressor: str = "diffres"
    rate: float = 0.5
    hop_ms: float = 10.0
    n_mels: int = 40
    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    lr: float = 3e-3  # peak; chosen on validation accuracy of the full-resolution model
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    # The published DiffRes recipe adds ret["guide_loss"] to the task loss unweighted.
    guide_loss_weight: float = 1.0
    mixup: float = 0.0  # Beta(alpha, alpha) on waveforms; 0 disables
    time_masks: int = 2
    time_mask_frac: float = 0.1  # widest time mask, as a fraction of T (hop independent)
    freq_masks: int = 2
    freq_mask_bins: int = 8
    classifier: str = "cnn"
    width: int = 32  # cnn: channels of the last blocks; bcresnet: of the first stage (use 40)
    dropout: float = 0.1
    eval_batch_size: int = 256
    threads: int = 0  # 0: every core this process may use
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {COMPRESSORS}, got {self.compressor!r}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {self.rate}")
        if self.hop_ms <= 0 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError("hop_ms must be > 0, epochs >= 1 and batch_size >= 2")

    @property
    def effective_rate(self) -> float:
        """Full resolution keeps every frame whatever ``rate`` says."""
        return 0.0 if self.compressor == "full" else self.rate

    @property
    def hop_length(self) -> int:
        return hop_length(self.hop_ms)

    @property
    def in_t_dim(self) -> int:
        return 1 + CLIP_SAMPLES // self.hop_length

    def frontend_kwargs(self) -> dict[str, Any]:
        """Arguments of ``service.frontend.LogMel``: 25 ms window, the configured hop."""
        window = round(SAMPLE_RATE * WINDOW_MS / 1000)
        return {"sample_rate": SAMPLE_RATE, "n_fft": window, "win_length": window,
                "hop_length": self.hop_length, "n_mels": self.n_mels}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: Path) -> None:
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "TrainConfig":
        return cls(**json.loads((Path(directory) / CONFIG_FILE).read_text()))


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict completed with the defaults of fields added since it was written
    (a run from before ``classifier`` existed trained the "cnn"), so old runs still resume."""
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)
                if field.default is not dataclasses.MISSING}
    return defaults | saved


def hop_length(hop_ms: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples per hop: 10 ms -> 160, 1 ms -> 16 at 16 kHz."""
    return max(1, round(sample_rate * hop_ms / 1000))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, ``--hop-ms`` for ``hop_ms``, defaults from the dataclass."""
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, type=str)
        elif field.name == "compressor":
            parser.add_argument(flag, default=field.default, choices=COMPRESSORS)
        elif field.name == "classifier":
            parser.add_argument(flag, default=field.default, choices=CLASSIFIERS)
        elif field.name == "width":
            parser.add_argument(flag, default=None, type=int,
                                help=f"default: the classifier's own, {DEFAULT_WIDTHS}")
        else:
            parser.add_argument(flag, default=field.default, type=type(field.default))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("width") is None:
        values["width"] = DEFAULT_WIDTHS[values.get("classifier", "cnn")]
    return TrainConfig(**values)
