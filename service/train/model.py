"""Build a run's front end and model from its config: training and export share this."""

import math

from torch import nn

from service.frontend import LogMel
from service.pipeline import AudioClassifier
from service.train.config import TrainConfig


def build_frontend(cfg: TrainConfig) -> LogMel:
    return LogMel(**cfg.frontend_kwargs())


def build_model(cfg: TrainConfig, n_classes: int) -> AudioClassifier:
    """Compressor [B, T, F] -> [B, C, t, F], then the classifier -> logits."""
    return AudioClassifier.build(cfg.compressor, cfg.in_t_dim, cfg.n_mels, cfg.effective_rate,
                                 n_classes, width=cfg.width, dropout=cfg.dropout,
                                 classifier=cfg.classifier)


def log_floor_value(frontend: nn.Module) -> float:
    """The front end's smallest output, natural log of its floor: what masks are filled with."""
    return math.log(frontend.spec().log_floor)
