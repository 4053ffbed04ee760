"""Training-time augmentation as pure tensor functions (global torch RNG, so seeded runs repeat).

SpecAugment runs on the log-mel BEFORE the compressor and fills masks with the front end's
log floor: a time-masked frame is then as quiet as digital silence, which is exactly what
DiffRes's guide loss counts as an empty frame, so the importance estimator learns to give
masked frames little weight.
"""

import torch
from torch import Tensor


def band_mask(batch: int, length: int, n_masks: int, max_width: int,
              device: torch.device | None = None) -> Tensor:
    """[batch, length] bool: the union of ``n_masks`` bands per row, each of width
    uniform in [0, max_width] and placed uniformly inside [0, length)."""
    max_width = max(0, min(max_width, length))
    width = (torch.rand(batch, n_masks, device=device) * (max_width + 1)).long()
    start = (torch.rand(batch, n_masks, device=device) * (length - width + 1)).long()
    pos = torch.arange(length, device=device)
    inside = (pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(x: Tensor, time_masks: int, max_time: int, freq_masks: int, max_freq: int,
                 fill: float) -> Tensor:
    """Time and frequency masking of a log-mel [B, T, F]; masked cells become ``fill``."""
    b, t, f = x.shape
    time = band_mask(b, t, time_masks, max_time, x.device)
    freq = band_mask(b, f, freq_masks, max_freq, x.device)
    return x.masked_fill(time.unsqueeze(2) | freq.unsqueeze(1), fill)


def mixup(waves: Tensor, alpha: float) -> tuple[Tensor, Tensor, float]:
    """Mix each waveform [B, N] with a shuffled partner at one Beta(alpha, alpha) weight.

    Mixing waveforms (not log-mels) keeps the sum physical: silence stays silence only where
    both clips are silent. Returns (mixed, partner index [B], lam).
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(waves.shape[0], device=waves.device)
    return lam * waves + (1.0 - lam) * waves[partner], partner, lam
