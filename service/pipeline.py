"""Compressor + classifier composition for training and for export. No I/O.

Training uses :class:`AudioClassifier`; export wraps any compressor and classifier (ours or a
user's) in :class:`ServingGraph`, whose forward is the serving contract (spectrogram in, a
fixed tuple of arrays out).
"""

import copy
from collections.abc import Sequence
from typing import Final

import torch
from torch import Tensor, nn

from service.bcresnet import BCResNet
from service.classifier import Classifier
from service.diffres import AvgMaxPool, AvgPool, ChangeHopSize, ConvAvgPool, DiffRes, FullResolution
from service.manifest import COMPRESSION_OUTPUTS, REQUIRED_OUTPUTS, SPECTROGRAM

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


CLASSIFIERS: dict[str, type[nn.Module]] = {
    "cnn": Classifier,
    "bcresnet": BCResNet,
}


def build_classifier(kind: str, in_channels: int, n_classes: int, in_f_dim: int,
                     width: int | None = None, dropout: float = 0.1) -> nn.Module:
    """The classifier ``kind`` for features [B, in_channels, t, in_f_dim]: "cnn" is the
    compact :class:`Classifier` (~8 MFLOPs), "bcresnet" the :class:`BCResNet` of real size
    (66 MFLOPs at full resolution). ``width`` None: the classifier's own default (32, 40)."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier kind {kind!r}; expected one of {sorted(CLASSIFIERS)}")
    sizes = {} if width is None else {"width": width}
    return CLASSIFIERS[kind](in_channels, n_classes, in_f_dim, dropout=dropout, **sizes)


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
              width: int | None = None, dropout: float = 0.1,
              classifier: str = "cnn") -> "AudioClassifier":
        """A compressor of ``kind`` with a classifier of kind ``classifier`` (see
        :func:`build_classifier`) sized for its feature."""
        compressor = build_compressor(kind, in_t_dim, in_f_dim, rate)
        classifier_module = build_classifier(classifier, compressor.feature_channels, n_classes,
                                             in_f_dim, width, dropout)
        return cls(compressor, classifier_module, kind)

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


def compressor_kind(compressor: nn.Module) -> str:
    """The manifest's kind for ``compressor``: ours by class, "custom" for anything else."""
    for kind, cls in COMPRESSORS.items():
        if type(compressor) is cls:
            return kind
    return "custom"


class FeatureOnly(nn.Module):
    """Adapts a compressor that returns its feature map as one tensor to the dict contract."""

    def __init__(self, compressor: nn.Module) -> None:
        super().__init__()
        self.compressor = compressor

    def forward(self, spectrogram: Tensor) -> dict[str, Tensor]:
        return {"feature": self.compressor(spectrogram)}


class ServingGraph(nn.Module):
    """The exported model: compressor then classifier, with the serving contract.

    forward(spectrogram [B, T, F]) -> (probabilities [B, n_classes], frame_scores [B, T]).
    The compressor returns a dict with "feature" (what the classifier takes) and, if it
    learns one, "score" [B, T, 1]; without it every frame scores the uniform t / T. The
    classifier returns logits. Use :func:`serving_graph`, which picks the subclass: TorchScript
    needs one static return type per class. Holds eval-mode copies; the caller's modules
    (and their train/eval mode) are left untouched.
    """

    input_names = [SPECTROGRAM]
    output_names = list(REQUIRED_OUTPUTS)
    has_score: Final[bool]

    def __init__(self, compressor: nn.Module, classifier: nn.Module, in_t_dim: int,
                 out_t_dim: int, has_score: bool) -> None:
        super().__init__()
        self.compressor = copy.deepcopy(compressor)
        self.classifier = copy.deepcopy(classifier)
        self.uniform_score = out_t_dim / in_t_dim
        self.has_score = has_score
        self.eval()

    def _classify(self, spectrogram: Tensor, feature: Tensor | None,
                  score: Tensor | None) -> tuple[Tensor, Tensor]:
        logits = self.classifier(_required(feature, "feature"))
        if score is None:
            frame_scores = torch.full_like(spectrogram[:, :, 0], self.uniform_score)
        else:
            frame_scores = score.squeeze(2)
        return torch.softmax(logits, dim=1), frame_scores

    def forward(self, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        out = self.compressor(spectrogram)
        score: Tensor | None = None
        if self.has_score:
            score = out["score"]
        return self._classify(spectrogram, out["feature"], score)


class CompressingServingGraph(ServingGraph):
    """ServingGraph of a compressor that also returns the compressed maps (DiffRes): they
    are what POST /compress answers."""

    output_names = [*REQUIRED_OUTPUTS, *COMPRESSION_OUTPUTS]

    def forward(self, spectrogram: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        out = self.compressor(spectrogram)
        score: Tensor | None = None
        if self.has_score:
            score = out["score"]
        probabilities, frame_scores = self._classify(spectrogram, out["feature"], score)
        return (probabilities, frame_scores, _required(out["avgpool"], "avgpool"),
                _required(out["maxpool"], "maxpool"),
                _required(out["resolution_enc"], "resolution_enc"))


def serving_graph(compressor: nn.Module, classifier: nn.Module, in_t_dim: int,
                  out_t_dim: int, keys: Sequence[str]) -> ServingGraph:
    """The graph for a compressor whose dict output holds ``keys`` (from a dry run)."""
    cls = CompressingServingGraph if set(COMPRESSION_OUTPUTS) <= set(keys) else ServingGraph
    return cls(compressor, classifier, in_t_dim, out_t_dim, has_score="score" in keys)
