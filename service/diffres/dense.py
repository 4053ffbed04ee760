"""The published dense formulation of DiffRes's frame warping, re-derived for reference.

It builds the full [B, T, t] weight matrix, so time and memory grow with T * t. It exists
only to check the linear-time code (tests) and to measure what it saves (benchmarks);
nothing in the service uses it.
"""

import torch
from torch import Tensor

from service.diffres import functional as Fn


def dense_weight_matrix(score: Tensor, out_len: int) -> Tensor:
    """[B, T, 1] normalised scores -> [B, T, t] warping weights (columns sum to 1)."""
    cum = torch.cumsum(score, dim=1)  # [B, T, 1]
    steps = torch.arange(out_len, device=score.device, dtype=score.dtype)
    member = (cum > steps) & (cum <= steps + 1)  # [B, T, t]: frame i in step j
    weight = score * member
    lacking = torch.cumsum(1.0 - weight.sum(dim=1, keepdim=True), dim=2)  # [B, 1, t]
    m = member.to(score.dtype)
    previous = torch.nn.functional.pad(m[:, :-1], (0, 0, 1, 0))
    opens = (m - previous) > 0  # first frame of step j (not frame 0)
    opens[:, 0] = False
    closes_before = (previous - m) > 0  # first frame after step j
    take = opens[:, :, 1:] * lacking[:, :, :-1]
    take = torch.nn.functional.pad(take, (1, 0))
    give = closes_before * lacking
    return torch.clamp(weight - take + give, 0.0, 1.0)


def scatter_max_first(values: Tensor, index: Tensor, size: int) -> Tensor:
    """torch_scatter's ``scatter_max`` into zeros along dim 1: the max over an initial 0,
    whose gradient goes to its argmax alone, the first element that exceeded the running max.
    """
    peak = values.new_zeros(values.shape[0], size, values.shape[2]).scatter_reduce(
        1, index, values.detach(), "amax", include_self=True)
    winner = (values.detach() == peak.gather(1, index)) & (values.detach() > 0)
    frame = torch.arange(values.shape[1], device=values.device).view(1, -1, 1).expand_as(index)
    first = torch.full_like(peak, values.shape[1], dtype=torch.long).scatter_reduce(
        1, index, torch.where(winner, frame, values.shape[1]), "amin", include_self=True)
    chosen = winner & (frame == first.gather(1, index))
    return values.new_zeros(peak.shape).scatter_add(1, index, values * chosen)


def dense_step_max(feature: Tensor, weight: Tensor, rate: float) -> Tensor:
    """Published max aggregation from the dense matrix: [B, T, F] -> [B, t, F]."""
    out_len = weight.shape[2]
    out = feature.new_zeros(feature.shape[0], out_len, feature.shape[2])
    for parity in (0, 1):
        cols = torch.arange(parity, out_len, 2, device=weight.device)
        if cols.numel() == 0:
            continue
        w = weight[:, :, cols].sum(dim=2, keepdim=True)  # [B, T, 1]
        cum = torch.cumsum(w, dim=1)
        cum = torch.where(torch.remainder(cum, 1.0) < 1e-2, cum - 1e-2, cum)
        bucket = torch.clamp(torch.floor(cum).long(), 0, cols.numel() - 1)
        out[:, cols] = scatter_max_first(feature * w, bucket.expand_as(feature), cols.numel())
    return out * (1.0 / (1.0 - rate))


def dense_normalize_scores(score: Tensor, total_length: int) -> Tensor:
    """The published score normalisation, with its per-item Python loop."""
    score = score / score.sum(dim=(1, 2), keepdim=True) * total_length
    max_val = score.max(dim=1).values[..., 0]
    rescale = max_val >= 1
    if bool(rescale.any()):
        score = score.clone()
        score[rescale] = score[rescale] / max_val[rescale][..., None, None]
        deficit = (total_length - score.sum(dim=(1, 2), keepdim=True))[:, 0, 0]
        movable = (score < Fn.RESCALE_MAX) & (score > Fn.RESCALE_MIN)
        for i in range(score.shape[0]):
            if deficit[i] >= 1:
                interval = 1.0 - score[i][movable[i]]
                alpha = torch.clamp(deficit[i] / interval.sum(), max=1.0)
                score[i][movable[i]] += interval * alpha
    return score


def dense_guide_loss(x: Tensor, score: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """Published guide loss and activeness, item by item (always exponentiating x)."""
    energy = x.exp().mean(dim=-1, keepdim=True)
    empty = energy < energy.min() + 1e-6
    guide = x.new_zeros(1)
    activeness = x.new_zeros(1)
    batch = score.shape[0]
    for i in range(batch):
        g = score[i][empty[i]].mean()
        if torch.isnan(g):
            continue
        if g > (1 - rate) * 0.5:
            guide = guide + g / batch
        a = score[i][~empty[i]].std()
        if torch.isnan(a):
            continue
        activeness = activeness + a / batch
    return guide, activeness


def dense_diffres(x: Tensor, raw_score: Tensor, pos_emb: Tensor, rate: float) -> dict[str, Tensor]:
    """The whole published forward after the estimator: x [B, T, F], raw_score [B, T, 1]."""
    out_len = Fn.output_length(x.shape[1], rate)
    score = dense_normalize_scores(raw_score, out_len)
    feature = x.exp()
    weight = dense_weight_matrix(score, out_len)
    wt = weight.transpose(1, 2)
    avgpool = torch.log(wt @ feature + Fn.EPS)
    maxpool = torch.log(dense_step_max(feature, weight, rate) + Fn.EPS)
    resolution_enc = wt @ pos_emb
    guide_loss, activeness = dense_guide_loss(x, score, rate)
    return {"score": score, "avgpool": avgpool, "maxpool": maxpool,
            "resolution_enc": resolution_enc,
            "feature": torch.stack([avgpool, maxpool, resolution_enc], dim=1),
            "guide_loss": guide_loss, "activeness": activeness}
