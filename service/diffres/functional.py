"""The DiffRes math as pure, exportable functions.

Everything here is O(B * T * F): each input frame feeds at most two output steps, so the
frame warping is two scatters instead of the published dense [B, T, t] weight matrix.
No Python loop over the batch, no ``.item()``, no data-dependent branching, so the same
code trains with autograd, scripts to TorchScript and exports to ONNX (opset >= 18).

Shapes: B batch, T input frames, F mel bins, t = output_length(T, rate) output steps.
"""

import math

import torch
from torch import Tensor

EPS = 1e-12
RESCALE_MIN = 1e-4
RESCALE_MAX = 1.0 - 1e-4
# The published max-pool bucketing subtracts this from cumulative weights just above an
# integer, to absorb float noise; we reproduce it because it changes which step a frame
# with a tiny weight lands in.
_BUCKET_NUDGE = 1e-2


def output_length(in_t_dim: int, dimension_reduction_rate: float) -> int:
    """t = int(T * (1 - rate)) in Python floats, as published (T=3000, 0.9 gives 299)."""
    return int(in_t_dim * (1 - dimension_reduction_rate))


def sinusoidal_position_table(length: int, dim: int) -> Tensor:
    """[1, length, dim] sin/cos table of the published PositionalEncoding (odd dim allowed)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: dim // 2])
    return table.unsqueeze(0)


def normalize_scores(score: Tensor, total_length: int) -> Tensor:
    """[B, T, 1] raw scores in (0, 1) -> scores summing to ``total_length``, each <= 1.

    Items whose largest normalised score reaches 1 are divided by it and then topped up
    towards the target sum by moving every mid-range frame part of the way to 1.
    """
    score = score / score.sum(dim=(1, 2), keepdim=True) * total_length
    max_val = torch.max(score, dim=1).values.unsqueeze(1)  # [B, 1, 1]
    score = torch.where(max_val >= 1, score / max_val, score)

    deficit = total_length - score.sum(dim=(1, 2), keepdim=True)  # [B, 1, 1]
    movable = (score < RESCALE_MAX) & (score > RESCALE_MIN)
    interval = torch.where(movable, 1.0 - score, torch.zeros_like(score))
    room = interval.sum(dim=(1, 2), keepdim=True)
    safe_room = torch.where(room > 0, room, torch.ones_like(room))
    alpha = torch.clamp(deficit / safe_room, max=1.0)
    return torch.where(deficit >= 1, score + interval * alpha, score)


def warp_weights(score: Tensor, out_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sparse form of the published [B, T, t] warping matrix.

    Frame i belongs to step g_i = ceil(c_i) - 1 with c = cumsum(score). A frame that opens a
    new step gives the previous step what it lacks of a total weight of 1.

    Returns (step [B, T] long, own [B, T], prev [B, T]): frame i puts weight ``own`` on
    step ``step`` and weight ``prev`` on step ``step - 1``. Steps outside [0, t) are
    returned as ``out_len`` (a dump slot callers drop).
    """
    s = score.squeeze(-1)
    step = torch.ceil(torch.cumsum(s, dim=1)).long() - 1
    prev_step = torch.cat([step[:, :1], step[:, :-1]], dim=1)
    opens = (step != prev_step) & (step >= 1)

    dump = torch.full_like(step, out_len)
    in_range = (step >= 0) & (step < out_len)
    own_idx = torch.where(in_range, step, dump)
    # Weight each step already holds; what it lacks of 1, accumulated over steps, is what
    # the frame opening the next step hands back (the published need_add / need_minus).
    held = s.new_zeros(s.shape[0], out_len + 1).scatter_add(1, own_idx, s)[:, :out_len]
    lacking = torch.cumsum(1.0 - held, dim=1)
    lacking = torch.cat([lacking, lacking.new_zeros(s.shape[0], 1)], dim=1)
    prev_idx = torch.where(opens & (step <= out_len), step - 1, dump)
    handed = torch.where(opens, lacking.gather(1, prev_idx), torch.zeros_like(s))

    own = torch.clamp(s - handed, 0.0, 1.0)
    prev = torch.clamp(handed, 0.0, 1.0)
    return own_idx, own, prev_idx, prev


def _scatter_steps(values: Tensor, own_idx: Tensor, own: Tensor, prev_idx: Tensor,
                   prev: Tensor, out_len: int) -> Tensor:
    """W^T values: [B, T, C] -> [B, t, C] with the sparse warping weights."""
    b, _, c = values.shape
    out = values.new_zeros(b, out_len + 1, c)
    out = out.scatter_add(1, own_idx.unsqueeze(-1).expand_as(values), values * own.unsqueeze(-1))
    out = out.scatter_add(1, prev_idx.unsqueeze(-1).expand_as(values), values * prev.unsqueeze(-1))
    return out[:, :out_len]


def _parity_buckets(weight: Tensor, n_buckets: int) -> Tensor:
    """Published bucketing: floor of the cumulative weight, nudged below integers."""
    cum = torch.cumsum(weight, dim=1)
    cum = torch.where(torch.remainder(cum, 1.0) < _BUCKET_NUDGE, cum - _BUCKET_NUDGE, cum)
    return torch.clamp(torch.floor(cum).long(), 0, max(n_buckets - 1, 0))


def _step_max(feature: Tensor, own_idx: Tensor, own: Tensor, prev_idx: Tensor,
              prev: Tensor, out_len: int) -> Tensor:
    """Published max aggregation: even and odd steps bucketed separately, maximum of
    feature * weight with an initial 0. [B, T, F] -> [B, t, F]."""
    parts: list[Tensor] = []
    indices: list[Tensor] = []
    for parity in (0, 1):
        n_buckets = (out_len + 1 - parity) // 2
        if n_buckets == 0:
            continue
        own_here = (own_idx < out_len) & (torch.remainder(own_idx, 2) == parity)
        prev_here = (prev_idx < out_len) & (torch.remainder(prev_idx, 2) == parity)
        weight = torch.where(own_here, own, torch.zeros_like(own)) + torch.where(
            prev_here, prev, torch.zeros_like(prev)
        )
        bucket = _parity_buckets(weight, n_buckets) * 2 + parity
        parts.append(feature * weight.unsqueeze(-1))
        indices.append(bucket)
    values = torch.cat(parts, dim=1)
    index = torch.cat(indices, dim=1).unsqueeze(-1).expand_as(values)
    out = feature.new_zeros(feature.shape[0], out_len, feature.shape[2])
    return out.scatter_reduce(1, index, values, reduce="amax", include_self=True)


def frame_warping(
    feature: Tensor, score: Tensor, pos_emb: Tensor, out_len: int, rate: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Compress the time axis of a linear-magnitude ``feature`` [B, T, F].

    Returns (avgpool, maxpool, resolution_enc), each [B, t, F]; avgpool and maxpool are
    back in natural-log units.
    """
    own_idx, own, prev_idx, prev = warp_weights(score, out_len)
    f = feature.shape[2]
    both = torch.cat([feature, pos_emb.expand(feature.shape[0], -1, -1)], dim=2)
    pooled = _scatter_steps(both, own_idx, own, prev_idx, prev, out_len)
    avgpool = torch.log(pooled[:, :, :f] + EPS)
    resolution_enc = pooled[:, :, f:]
    peak = _step_max(feature, own_idx, own, prev_idx, prev, out_len)
    maxpool = torch.log(peak * (1.0 / (1.0 - rate)) + EPS)
    return avgpool, maxpool, resolution_enc


def guide_loss_and_activeness(x: Tensor, score: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """Published guide loss and activeness, both shape [1].

    x is a natural-log spectrogram [B, T, F] and is always exponentiated: the published
    code skips that for input with min >= 0 and then crashes, and DiffRes treats its input
    as log-scale everywhere else. A frame is empty when its mean linear energy is within
    1e-6 of the batch's smallest. An item adds its mean empty-frame score (over B) when
    that exceeds 0.5 * (1 - rate); its activeness is the std of its non-empty scores.
    Items with no empty frame, as published, add to neither.
    """
    s = score.squeeze(-1)
    energy = x.exp().mean(dim=-1)
    empty = energy < energy.min() + 1e-6
    zeros = torch.zeros_like(s)
    n_empty = empty.sum(dim=1)
    n_active = (~empty).sum(dim=1)
    batch = s.shape[0]

    has_empty = n_empty > 0
    empty_mean = torch.where(empty, s, zeros).sum(dim=1) / torch.clamp(n_empty, min=1)
    counts = has_empty & (empty_mean > (1.0 - rate) * 0.5)
    guide = torch.where(counts, empty_mean, torch.zeros_like(empty_mean)).sum() / batch

    valid = has_empty & (n_active >= 2)
    active_mean = torch.where(~empty, s, zeros).sum(dim=1) / torch.clamp(n_active, min=1)
    centred = torch.where(~empty, s - active_mean.unsqueeze(1), zeros)
    var = centred.pow(2).sum(dim=1) / torch.clamp(n_active - 1, min=1)
    std = torch.sqrt(torch.where(valid, var, torch.ones_like(var)))
    activeness = torch.where(valid, std, torch.zeros_like(std)).sum() / batch
    return guide.reshape(1), activeness.reshape(1)
