"""What a model costs: parameters, classifier MFLOPs, CPU milliseconds per clip."""

import copy
import time

import torch
from torch import nn

from service.classifier import classifier_mflops


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.inference_mode()
def cpu_ms_per_clip(model: nn.Module, in_t_dim: int, in_f_dim: int, batch: int,
                    repeats: int = 5, warmup: int = 2) -> float:
    """Best-of-``repeats`` wall time of compressor+classifier (front end excluded) on the CPU,
    per clip. The minimum, as ``timeit`` advises: on shared cores anything else measures
    the neighbours."""
    model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch, in_t_dim, in_f_dim) - 6.0  # log-mel-like values
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times) / batch


def model_costs(model: nn.Module, in_t_dim: int, in_f_dim: int) -> dict[str, float]:
    """The cost columns of result.json for an ``AudioClassifier``."""
    compressor, classifier = model.compressor, model.classifier
    t = compressor.output_seq_length
    return {
        "in_t_dim": in_t_dim,
        "out_t_dim": t,
        "frames_kept_fraction": t / in_t_dim,
        "classifier_mflops": float(classifier_mflops(classifier, compressor.feature_channels,
                                                     t, in_f_dim)),
        "cpu_ms_per_clip_b1": cpu_ms_per_clip(model, in_t_dim, in_f_dim, 1, repeats=20),
        "cpu_ms_per_clip_b64": cpu_ms_per_clip(model, in_t_dim, in_f_dim, 64, repeats=3),
        "cpu_threads": torch.get_num_threads(),
        "n_params": count_params(model),
        "n_params_trainable": count_params(model, trainable_only=True),
        "n_params_compressor": count_params(compressor),
    }
