"""AdamW with a per-step linear warm-up then cosine decay to zero."""

import math

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at ``step``: rises linearly to 1 over warm-up, then a half cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, steps_per_epoch: int,
                    epochs: int, warmup_epochs: float
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Only trainable parameters (DiffRes's fixed position table is a frozen parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = steps_per_epoch * epochs
    warmup = min(total, max(1, round(warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total))
    return optimizer, scheduler
