"""Compressor + classifier composition for training and for export. No I/O.

Training uses :class:`AudioClassifier`; export wraps it in :class:`ServingGraph`, whose
forward is the serving contract (spectrogram in, a fixed tuple of arrays out).
"""

import copy

import torch
from torch import Tensor, nn

from service.classifier import Classifier
from service.diffres import AvgMaxPool, AvgPool, ChangeHopSize, ConvAvgPool, DiffRes, FullResolution

COMPRESSORS: dict[str, type[nn.Module]] = {
    "diffres": DiffRes,
    "avgpool": AvgPool,
    "avgmaxpool": AvgMaxPool,
    "convavgpool": ConvAvgPool,
    "changehopsize": ChangeHopSize,
    "full": FullResolution,
}


def build_compressor(kind: str, in_t_dim: int, in_f_dim: int, rate: float) -> nn.Module:
    """The temporal compressor ``kind`` for [B, in_t_dim, in_f_dim] inputs.

    ``rate`` is the fraction of frames removed; "full" ignores it (always 0).
    """
    if kind not in COMPRESSORS:
        raise ValueError(f"unknown compressor kind {kind!r}; expected one of {sorted(COMPRESSORS)}")
    if kind == "full":
        return FullResolution(in_t_dim, in_f_dim)
    return COMPRESSORS[kind](in_t_dim, in_f_dim, rate)


def _required(value: Tensor | None, name: str) -> Tensor:
    """Narrow a compressor output that the contract says is present (TorchScript refinement)."""
    if value is None:
        raise RuntimeError("compressor returned no " + name)
    return value


class AudioClassifier(nn.Module):
    """Compressor then classifier. forward(spectrogram [B, T, F] log-mel) returns a dict:

    logits [B, n_classes]; score [B, T, 1] frame importance (for fixed-resolution kinds the
    uniform t / T, so every kind reports the same shape); guide_loss and activeness [1]
    (zeros for kinds without a learnt score).
    """

    def __init__(self, compressor: nn.Module, classifier: nn.Module, kind: str) -> None:
        super().__init__()
        if kind not in COMPRESSORS:
            raise ValueError(f"unknown compressor kind {kind!r}")
        self.kind = kind
        self.compressor = compressor
        self.classifier = classifier
        self.in_t_dim: int = compressor.input_seq_length
        self.in_f_dim: int = compressor.input_f_dim
        self.out_t_dim: int = compressor.output_seq_length
        self.uniform_score: float = self.out_t_dim / self.in_t_dim

    @classmethod
    def build(cls, kind: str, in_t_dim: int, in_f_dim: int, rate: float, n_classes: int,
              width: int = 32, dropout: float = 0.1) -> "AudioClassifier":
        """A compressor of ``kind`` with a :class:`Classifier` sized for its feature."""
        compressor = build_compressor(kind, in_t_dim, in_f_dim, rate)
        classifier = Classifier(compressor.feature_channels, n_classes, in_f_dim, width, dropout)
        return cls(compressor, classifier, kind)

    @property
    def n_classes(self) -> int:
        return self.classifier.n_classes

    @property
    def dimension_reduction_rate(self) -> float:
        return self.compressor.dimension_reduction_rate

    def frame_scores(self, spectrogram: Tensor, score: Tensor | None) -> Tensor:
        """[B, T, 1]: the learnt score, or the uniform t / T when there is none."""
        if score is None:
            return torch.full_like(spectrogram[:, :, :1], self.uniform_score)
        return score

    def forward(self, spectrogram: Tensor) -> dict[str, Tensor]:
        out = self.compressor(spectrogram)
        logits = self.classifier(_required(out["feature"], "feature"))
        return {
            "logits": logits,
            "score": self.frame_scores(spectrogram, out["score"]),
            "guide_loss": _required(out["guide_loss"], "guide_loss"),
            "activeness": _required(out["activeness"], "activeness"),
        }


class ServingGraph(nn.Module):
    """An eval-mode copy of an :class:`AudioClassifier` with the serving contract.

    forward(spectrogram [B, T, F]) -> (probabilities [B, n_classes], frame_scores [B, T]),
    plus (avgpool, maxpool, resolution_enc), each [B, t, F], for DiffRes. TorchScript needs
    one static return type per class, so ``ServingGraph(model)`` builds a
    :class:`DiffResServingGraph` for DiffRes models. ``output_names`` matches the tuple.
    The copy leaves the caller's model (and its train/eval mode) untouched.
    """

    input_names = ["spectrogram"]
    output_names = ["probabilities", "frame_scores"]

    def __new__(cls, model: AudioClassifier | None = None):
        if cls is ServingGraph and model is not None and model.kind == "diffres":
            cls = DiffResServingGraph
        return super().__new__(cls)

    def __init__(self, model: AudioClassifier) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        self.kind = model.kind
        self.eval()

    def _classify(self, spectrogram: Tensor, feature: Tensor | None,
                  score: Tensor | None) -> tuple[Tensor, Tensor]:
        logits = self.model.classifier(_required(feature, "feature"))
        frame_scores = self.model.frame_scores(spectrogram, score).squeeze(2)
        return torch.softmax(logits, dim=1), frame_scores

    def forward(self, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.compressor(spectrogram)
        return self._classify(spectrogram, out["feature"], out["score"])


class DiffResServingGraph(ServingGraph):
    """ServingGraph of a DiffRes model: also returns the compressed feature maps."""

    output_names = ["probabilities", "frame_scores", "avgpool", "maxpool", "resolution_enc"]

    def forward(self, spectrogram: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        out = self.model.compressor(spectrogram)
        probabilities, frame_scores = self._classify(spectrogram, out["feature"], out["score"])
        return (probabilities, frame_scores, _required(out["avgpool"], "avgpool"),
                _required(out["maxpool"], "maxpool"),
                _required(out["resolution_enc"], "resolution_enc"))
