"""The keyword dataset in memory: every split read once into one float32 tensor.

Layout (``service.train.dataset``): ``<root>/metadata.csv`` (path, label, split, ...) with
paths relative to the root, ``<root>/recipe.json``. 4,000 one-second clips are 256 MB, so
nothing is cached on disk; log-mels are computed per batch on the device.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from service.train.config import CLIP_SAMPLES, SAMPLE_RATE

SPLITS = ("train", "validation", "test")
# Splits a dataset may hold besides SPLITS: test_cross, voices of an engine family that
# training, validation and model selection never hear (docs/DATASET.md).
HELD_OUT_SPLITS = ("test_cross",)


@dataclass(frozen=True)
class Split:
    """One split in memory: waves [N, CLIP_SAMPLES] float32, labels [N] long, and optionally
    their log-mels [N, T, F] (see :func:`with_features`)."""

    waves: Tensor
    labels: Tensor
    paths: list[str]
    features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_metadata(root: Path) -> list[dict[str, str]]:
    with open(Path(root) / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_recipe(root: Path) -> dict[str, Any]:
    path = Path(root) / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_labels(root: Path, rows: list[dict[str, str]] | None = None) -> list[str]:
    """Class order: the recipe's, else the generator's ``LABELS``, else sorted names."""
    recipe = read_recipe(root)
    if recipe.get("labels"):
        return list(recipe["labels"])
    present = sorted({row["label"] for row in (rows or read_metadata(root))})
    try:
        from service.train.dataset import LABELS
    except ImportError:
        return present
    return list(LABELS) if set(present) <= set(LABELS) else present


def fit_length(audio: np.ndarray, n: int = CLIP_SAMPLES) -> np.ndarray:
    """Mono, exactly n samples: crop the tail or pad with zeros."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(audio))] = audio[:n]
    return out


def load_split(root: Path, split: str, labels: list[str],
               rows: list[dict[str, str]] | None = None) -> Split:
    """Read every WAV of one split; rows keep metadata.csv order."""
    index = {name: i for i, name in enumerate(labels)}
    chosen = [row for row in (rows or read_metadata(root)) if row["split"] == split]
    waves = np.zeros((len(chosen), CLIP_SAMPLES), dtype=np.float32)
    for i, row in enumerate(chosen):
        audio, rate = sf.read(Path(root) / row["path"], dtype="float32", always_2d=False)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{row['path']}: {rate} Hz, expected {SAMPLE_RATE}")
        waves[i] = fit_length(audio)
    targets = torch.tensor([index[row["label"]] for row in chosen], dtype=torch.long)
    return Split(torch.from_numpy(waves), targets, [row["path"] for row in chosen])


@torch.no_grad()
def with_features(split: Split, frontend: torch.nn.Module, batch_size: int = 256) -> Split:
    """The split with its log-mels computed once. Without mixup (which mixes waveforms) the
    front end's output never changes between epochs; at a 1 ms hop it is half the cost of a
    training step. 6,000 clips of 1,001 x 40 frames take 1 GB."""
    device = next(frontend.buffers()).device
    parts = [frontend(chunk.to(device)).cpu() for chunk in torch.split(split.waves, batch_size)]
    return Split(split.waves, split.labels, split.paths, torch.cat(parts))


def load_dataset(root: Path) -> tuple[list[str], dict[str, Split]]:
    """(labels, {split name: Split}) for train, validation and test, and each held-out split
    the dataset has."""
    rows = read_metadata(root)
    labels = read_labels(root, rows)
    names = SPLITS + held_out_splits(rows)
    return labels, {name: load_split(root, name, labels, rows) for name in names}


def held_out_splits(rows: list[dict[str, str]]) -> tuple[str, ...]:
    """The ``HELD_OUT_SPLITS`` that metadata ``rows`` hold."""
    present = {row["split"] for row in rows}
    return tuple(name for name in HELD_OUT_SPLITS if name in present)


def batch_indices(n: int, batch_size: int, shuffle: bool) -> list[Tensor]:
    """Index batches over n items; a trailing batch of one is dropped when shuffling
    (BatchNorm cannot train on it)."""
    order = torch.randperm(n) if shuffle else torch.arange(n)
    batches = list(torch.split(order, batch_size))
    if shuffle and batches and len(batches[-1]) < 2:
        batches.pop()
    return batches


def n_train_batches(n: int, batch_size: int) -> int:
    """len(batch_indices(n, batch_size, shuffle=True)) without drawing from the RNG."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def dataset_summary(root: Path, splits: dict[str, Split]) -> dict[str, Any]:
    """What the manifest and result.json say about the data: recipe path, seed, counts."""
    recipe = read_recipe(root)
    seed = recipe.get("params", {}).get("seed", recipe.get("seed"))
    per_label = recipe.get("counts") or {}
    return {"root": str(root), "recipe": str(Path(root) / "recipe.json"), "seed": seed,
            "generator": recipe.get("generator"),
            "counts": {name: len(split) for name, split in splits.items()},
            "counts_per_label": per_label, "total": recipe.get("total")}
