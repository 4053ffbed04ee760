"""One training epoch and one evaluation pass. Log-mels are made per batch, on the device.

Loss = cross-entropy (mixed by mixup when on) + guide_loss_weight * guide_loss.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from service.train.augment import mixup, spec_augment
from service.train.config import TrainConfig
from service.train.data import Split, batch_indices


@dataclass(frozen=True)
class Augment:
    """Per-run augmentation settings, in frames and bins."""

    mixup_alpha: float
    time_masks: int
    max_time: int
    freq_masks: int
    max_freq: int
    fill: float

    @classmethod
    def from_config(cls, cfg: TrainConfig, fill: float) -> "Augment":
        return cls(cfg.mixup, cfg.time_masks, round(cfg.time_mask_frac * cfg.in_t_dim),
                   cfg.freq_masks, cfg.freq_mask_bins, fill)


def train_epoch(model: nn.Module, frontend: nn.Module, data: Split,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                cfg: TrainConfig, augment: Augment, device: torch.device,
                desc: str = "train") -> dict[str, float]:
    """Mean train_loss, train_ce and guide_loss over the epoch's batches (weighted by size)."""
    model.train()
    sums = {"train_loss": 0.0, "train_ce": 0.0, "guide_loss": 0.0}
    seen = 0
    batches = batch_indices(len(data), cfg.batch_size, shuffle=True)
    for idx in tqdm(batches, desc=desc, leave=False, dynamic_ncols=True):
        ce, guide = _losses(model, frontend, data, idx, augment, device)
        loss = ce + cfg.guide_loss_weight * guide
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = len(idx)
        seen += n
        for key, value in (("train_loss", loss), ("train_ce", ce), ("guide_loss", guide)):
            sums[key] += float(value.detach()) * n
    return {key: value / max(seen, 1) for key, value in sums.items()}


def spectrogram(frontend: nn.Module, data: Split, idx: Tensor, device: torch.device) -> Tensor:
    """Log-mels of a batch: the split's precomputed ones when it has them."""
    if data.features is not None:
        return data.features[idx].to(device)
    with torch.no_grad():
        return frontend(data.waves[idx].to(device))


def _losses(model: nn.Module, frontend: nn.Module, data: Split, idx: Tensor,
            augment: Augment, device: torch.device) -> tuple[Tensor, Tensor]:
    """(cross-entropy, guide loss) of one augmented batch."""
    labels = data.labels[idx].to(device)
    partner, lam = None, 1.0
    if augment.mixup_alpha > 0:
        waves, partner, lam = mixup(data.waves[idx].to(device), augment.mixup_alpha)
        with torch.no_grad():
            spec = frontend(waves)
    else:
        spec = spectrogram(frontend, data, idx, device)
    spec = spec_augment(spec, augment.time_masks, augment.max_time, augment.freq_masks,
                        augment.max_freq, augment.fill)
    out = model(spec)
    ce = F.cross_entropy(out["logits"], labels)
    if partner is not None:
        ce = lam * ce + (1.0 - lam) * F.cross_entropy(out["logits"], labels[partner])
    return ce, out["guide_loss"].sum()


@torch.no_grad()
def predict(model: nn.Module, frontend: nn.Module, data: Split, batch_size: int,
            device: torch.device, desc: str | None = None) -> Tensor:
    """Logits [N, n_classes] on the CPU, model in eval mode, no augmentation."""
    model.eval()
    batches = batch_indices(len(data), batch_size, shuffle=False)
    logits = [model(spectrogram(frontend, data, idx, device))["logits"].float().cpu()
              for idx in tqdm(batches, desc=desc, leave=False, disable=desc is None)]
    return torch.cat(logits) if logits else torch.zeros(0)


def evaluate(model: nn.Module, frontend: nn.Module, data: Split, batch_size: int,
             device: torch.device, desc: str | None = None) -> dict[str, float]:
    """Cross-entropy and top-1 accuracy on one split."""
    logits = predict(model, frontend, data, batch_size, device, desc)
    return {"loss": float(F.cross_entropy(logits, data.labels)),
            "acc": float((logits.argmax(dim=1) == data.labels).float().mean())}
