"""The DiffRes math as pure, exportable functions.

Everything here is O(B * T * F): each input frame feeds at most two output steps, so the
frame warping is two scatters instead of the published dense [B, T, t] weight matrix.
No Python loop over the batch, no ``.item()``, no data-dependent branching, so the same
code trains with autograd, scripts to TorchScript and exports to ONNX (opset >= 18). The one
exception, ``frame_warping_from_log``, is for eager inference only: it loops over chunks of
frames and works in place, for speed, with the same numbers as ``frame_warping``.

Shapes: B batch, T input frames, F mel bins, t = output_length(T, rate) output steps.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Published constants. TorchScript cannot read module globals, so functions take them as
# default arguments.
EPS = 1e-12
RESCALE_MIN = 1e-4
RESCALE_MAX = 1.0 - 1e-4
# The published max-pool bucketing subtracts this from cumulative weights just above an
# integer, to absorb float noise; we reproduce it because it changes which step a frame
# with a tiny weight lands in.
BUCKET_NUDGE = 1e-2
# Elements per chunk of the inference warping (frame_warping_from_log): 4 MB of float32, which
# stays in cache between the ops that touch it (1024 frames at B=8, F=128; measured there,
# 512 frames was 7% slower, 2048 no faster).
INFERENCE_CHUNK_ELEMENTS = 2**20


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


def _exporting_onnx() -> bool:
    if torch.jit.is_scripting():
        return False
    return torch.onnx.is_in_onnx_export()


def needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd or an exporter has to see the whole computation, so the caller must
    take the graph-friendly path (``frame_warping``) rather than ``frame_warping_from_log``,
    whose in-place, chunked ops neither differentiate nor export.

    TorchScript cannot be detected here: test ``torch.jit.is_scripting()`` at the call site,
    where the compiler drops the branch it rules out.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or _exporting_onnx():
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def item_total(x: Tensor) -> Tensor:
    """[B, T, 1] -> [B, 1, 1], each item's sum.

    torch's sum, as published. In ONNX the last step of a float64 CumSum instead:
    onnxruntime's ReduceSum adds an item's values in an order that depends on where the item
    sits in the batch, so a served request's scores would change in the last bit with its
    batch neighbours; a sequential float32 sum would drift from torch's by several ulps.
    """
    if _exporting_onnx():
        return torch.cumsum(x.to(torch.float64), dim=1)[:, -1:].to(x.dtype)
    return x.sum(dim=(1, 2), keepdim=True)


def normalize_scores(score: Tensor, total_length: int, low: float = RESCALE_MIN,
                     high: float = RESCALE_MAX) -> Tensor:
    """[B, T, 1] raw scores in (0, 1) -> scores summing to ``total_length``, each <= 1.

    Items whose largest normalised score reaches 1 are divided by it and then topped up
    towards the target sum by moving every mid-range frame part of the way to 1.
    """
    score = score / item_total(score) * total_length
    max_val = torch.max(score, dim=1).values.unsqueeze(1)  # [B, 1, 1]
    score = torch.where(max_val >= 1, score / max_val, score)

    deficit = total_length - item_total(score)  # [B, 1, 1]
    movable = (score < high) & (score > low)
    interval = torch.where(movable, 1.0 - score, torch.zeros_like(score))
    room = item_total(interval)
    safe_room = torch.where(room > 0, room, torch.ones_like(room))
    alpha = torch.clamp(deficit / safe_room, max=1.0)
    return torch.where(deficit >= 1, score + interval * alpha, score)


class Warp(NamedTuple):
    """Sparse form of the published [B, T, t] warping matrix W.

    Frame i gives ``own[i]`` to step ``step[i]``. The frame that opens a new step also gives
    ``prev[i]`` to the step before, ``prev_step[i]``; seen from the steps, step j receives
    ``handed[j]`` from frame ``opener[j]``. A step index of t means "nowhere".
    """

    step: Tensor  # [B, T] long
    own: Tensor  # [B, T]
    prev_step: Tensor  # [B, T] long
    prev: Tensor  # [B, T]
    opener: Tensor  # [B, t] long
    handed: Tensor  # [B, t]


def warp_weights(score: Tensor, out_len: int) -> Warp:
    """Frame i belongs to step ceil(c_i) - 1, c = cumsum(score); the frame that crosses into
    a new step hands the previous step what it lacks of a total weight of 1.

    score [B, T, 1] must be normalised (each <= 1); T must stay below 2**24 (frame indices
    travel as floats through the export-friendly scatters).
    """
    s = score.squeeze(-1)
    b, n_frames = s.shape
    step = torch.ceil(torch.cumsum(s, dim=1)).long() - 1
    previous = torch.cat([step[:, :1], step[:, :-1]], dim=1)
    opens = (step != previous) & (step >= 1) & (step <= out_len)

    nowhere = torch.full_like(step, out_len)
    own_step = torch.where((step >= 0) & (step < out_len), step, nowhere)
    prev_step = torch.where(opens, step - 1, nowhere)
    # What each step lacks of 1, accumulated over steps (the published need_add/need_minus).
    held = s.new_zeros(b, out_len + 1).scatter_add(1, own_step, s)
    lacking = torch.cumsum(1.0 - held[:, :out_len], dim=1)
    lacking = torch.cat([lacking, lacking.new_zeros(b, 1)], dim=1)
    prev = torch.clamp(torch.where(opens, lacking.gather(1, prev_step), torch.zeros_like(s)),
                       0.0, 1.0)
    own = torch.clamp(s - torch.where(opens, lacking.gather(1, prev_step), torch.zeros_like(s)),
                      0.0, 1.0)

    frame = torch.arange(n_frames, device=s.device).to(s.dtype).expand(b, n_frames)
    marks = opens.to(s.dtype)
    opener = s.new_zeros(b, out_len + 1).scatter_add(1, prev_step, frame * marks)
    handed = s.new_zeros(b, out_len + 1).scatter_add(1, prev_step, prev * marks)
    return Warp(own_step, own, prev_step, prev, opener[:, :out_len].long(), handed[:, :out_len])


def segment_reduce(values: Tensor, index: Tensor, out_len: int, reduce: str,
                   into: Tensor | None = None) -> Tensor:
    """Reduce rows of ``values`` [B, N, C] into the steps ``index`` [B, N] names.

    Returns [B, t + 1, C], whose slot t collects the rows sent nowhere; pass it back as
    ``into`` to reduce more rows into the same steps. ``reduce`` is "sum" or "amax" (the
    latter over an initial 0). On a [rows, C] view, ``index_add_`` (sum) and
    ``scatter_reduce_`` (max, over the C columns in parallel: 3.7x faster than the
    single-threaded ``index_reduce_`` here) are an order of magnitude faster than scatters
    over [B, N, C]; the ONNX export gets the equivalent row-wise ScatterND instead.
    """
    b, n, c = values.shape
    out = values.new_zeros(b, out_len + 1, c) if into is None else into
    if _exporting_onnx():
        item = torch.arange(b, device=index.device).unsqueeze(1).expand(b, n)
        return _onnx_row_scatter(out, torch.stack([item, index], dim=-1), values, reduce)
    offset = torch.arange(b, device=index.device).unsqueeze(1) * (out_len + 1)
    rows = (index + offset).reshape(-1)
    flat = out.view(b * (out_len + 1), c)
    if reduce == "sum":
        flat.index_add_(0, rows, values.reshape(b * n, c))
    else:
        flat.scatter_reduce_(0, rows.unsqueeze(1).expand(-1, c), values.reshape(b * n, c),
                             "amax", include_self=True)
    return out


class _RowScatter(torch.autograd.Function):
    """``out`` with row ``values[b, n]`` reduced into row ``pairs[b, n]`` = (b, step), for the
    ONNX export only, where it becomes one ScatterND: onnxruntime runs that an order of
    magnitude faster than the element-wise ScatterElements a ``scatter_add`` or
    ``scatter_reduce`` exports to (30 vs 330 us for a batch of 32 windows of 101 x 40), with
    the same additions in the same order."""

    @staticmethod
    def forward(ctx, out: Tensor, pairs: Tensor, values: Tensor, reduce: str) -> Tensor:
        expanded = pairs[..., 1].unsqueeze(-1).expand_as(values)
        if reduce == "sum":
            return out.scatter_add(1, expanded, values)
        return out.scatter_reduce(1, expanded, values, reduce="amax", include_self=True)

    @staticmethod
    def symbolic(g, out, pairs, values, reduce: str):
        return g.op("ScatterND", out, pairs, values,
                    reduction_s="add" if reduce == "sum" else "max")


@torch.jit.unused
def _onnx_row_scatter(out: Tensor, pairs: Tensor, values: Tensor, reduce: str) -> Tensor:
    return _RowScatter.apply(out, pairs, values, reduce)


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N, C], index [B, M] -> [B, M, C], row ``index[b, m]`` of item b.

    One row-wise ``index_select`` (ONNX Gather) rather than an element-wise ``gather``.
    """
    b, n, c = values.shape
    offset = torch.arange(b, device=index.device).unsqueeze(1) * n
    rows = (index + offset).reshape(-1)
    return values.reshape(b * n, c).index_select(0, rows).view(b, index.shape[1], c)


def step_max(own: Tensor, own_step: Tensor, handed: Tensor, handed_step: Tensor,
             opener: Tensor, out_len: int) -> Tensor:
    """Max over an initial 0 of the frames' ``own`` [B, T, C] and the openers' ``handed``
    [B, t, C] weighted copies in each step (as ``segment_reduce``), whose gradient goes to
    one element, as the published scatter_max's does: the positive maximum of the earliest
    frame (``opener`` [B, t] says whose each handed copy is).

    torch's own amax splits the gradient among ties, and runs of digital silence tie
    everywhere. Without autograd (inference, export) this is a plain max.
    """
    peak = segment_reduce(handed.detach(), handed_step, out_len, "amax",
                          segment_reduce(own.detach(), own_step, out_len, "amax"))
    if not (torch.is_grad_enabled() and (own.requires_grad or handed.requires_grad)):
        return peak[:, :out_len]
    values = torch.cat([own, handed], dim=1)
    index = torch.cat([own_step, handed_step], dim=1)
    frame = torch.cat([torch.arange(own.shape[1], device=own.device).expand_as(own_step),
                       opener], dim=1)
    at_peak = gather_rows(peak, index)
    winner = (values.detach() == at_peak) & (values.detach() > 0)
    # The earliest frame scores highest; losers score 0, below every winner.
    rank = (frame.neg() + index.shape[1]).to(values.dtype).unsqueeze(-1)
    rank = torch.where(winner, rank, torch.zeros_like(values))
    chosen = winner & (rank == gather_rows(segment_reduce(rank, index, out_len, "amax"), index))
    return segment_reduce(torch.where(chosen, values, torch.zeros_like(values)), index, out_len,
                          "sum")[:, :out_len]


def _parity_buckets(weight: Tensor, n_buckets: int, nudge: float = BUCKET_NUDGE) -> Tensor:
    """Published bucketing: floor of the cumulative weight, nudged below integers."""
    cum = torch.cumsum(weight, dim=1)
    cum = torch.where(torch.remainder(cum, 1.0) < nudge, cum - nudge, cum)
    return torch.clamp(torch.floor(cum).long(), 0, max(n_buckets - 1, 0))


def max_steps(warp: Warp, out_len: int) -> tuple[Tensor, Tensor]:
    """Where the published max aggregation puts each weighted copy of a frame.

    It buckets even and odd output steps separately, each by the floor of the cumulative
    weight frames give to steps of that parity, which is not always the step the weight
    went to. Returns the step for each frame's ``own`` copy [B, T] and for each step's
    ``handed`` copy [B, t]; t means nowhere.
    """
    own_step = torch.full_like(warp.step, out_len)
    prev_step = own_step
    for parity in range(2):
        n_buckets = (out_len + 1 - parity) // 2
        if n_buckets > 0:
            own_here = (warp.step < out_len) & (torch.remainder(warp.step, 2) == parity)
            prev_here = (warp.prev_step < out_len) & (torch.remainder(warp.prev_step, 2) == parity)
            weight = torch.where(own_here, warp.own, torch.zeros_like(warp.own)) + torch.where(
                prev_here, warp.prev, torch.zeros_like(warp.prev))
            bucket = _parity_buckets(weight, n_buckets) * 2 + parity
            own_step = torch.where(own_here, bucket, own_step)
            prev_step = torch.where(prev_here, bucket, prev_step)
    return own_step, prev_step.gather(1, warp.opener)


def frame_warping(
    feature: Tensor, score: Tensor, pos_emb: Tensor, out_len: int, rate: float,
    eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Compress the time axis of a linear-magnitude ``feature`` [B, T, F].

    Returns (avgpool, maxpool, resolution_enc), each [B, t, F]; avgpool and maxpool are
    back in natural-log units. Work is O(B * T * F): every frame is weighted once for its
    own step, and only the t opening frames a second time, for the step before.
    """
    warp = warp_weights(score, out_len)
    b, _, f = feature.shape
    own = warp.own.unsqueeze(-1)
    handed = warp.handed.unsqueeze(-1)
    pos = pos_emb.expand(b, -1, -1)

    feature_own = feature * own
    feature_handed = gather_rows(feature, warp.opener) * handed
    avgpool = segment_reduce(feature_own, warp.step, out_len, "sum")[:, :out_len] + feature_handed
    pos_handed = pos_emb[0].index_select(0, warp.opener.reshape(-1)).view(b, out_len, f)
    enc = segment_reduce(pos * own, warp.step, out_len, "sum")[:, :out_len] + pos_handed * handed

    own_bucket, handed_bucket = max_steps(warp, out_len)
    peak = step_max(feature_own, own_bucket, feature_handed, handed_bucket, warp.opener, out_len)
    maxpool = torch.log(peak * (1.0 / (1.0 - rate)) + eps)
    return torch.log(avgpool + eps), maxpool, enc


def _reduce_into_feature(out: Tensor, values: Tensor, step: Tensor, channel: int,
                         reduce: str) -> None:
    """``segment_reduce`` of ``values`` [B, N, F] into the steps ``step`` [B, N] of one
    channel of a [B, 3, t, F] feature held as ``out`` [1, B * 3 * t + 1, F], whose last row
    collects the copies sent nowhere (step t): the results land in place, with no step
    buffer to copy them out of.
    """
    b, n, f = values.shape
    n_rows = out.shape[1] - 1
    out_len = n_rows // (3 * b)
    first = (torch.arange(b, device=step.device) * 3 + channel).unsqueeze(1) * out_len
    rows = torch.where(step < out_len, step + first, torch.full_like(step, n_rows))
    segment_reduce(values.reshape(1, b * n, f), rows.reshape(1, b * n), n_rows, reduce, out)


def frame_warping_from_log(
    x: Tensor, score: Tensor, pos_emb: Tensor, out_len: int, rate: float,
    chunk_elements: int | None = None, eps: float = EPS,
) -> tuple[Tensor, Tensor]:
    """``frame_warping(x.exp(), ...)`` for inference (no autograd, no export), from the
    natural-log ``x`` [B, T, F].

    Returns ``feature`` [B, 3, t, F] (avgpool, maxpool, resolution_enc, each bit-identical to
    ``frame_warping``'s) and the per-frame energy ``x.exp().mean(-1)`` [B, T] the guide
    loss needs. Fresh [B, T, F] temporaries cost more in page faults and memory traffic than
    the arithmetic on them, so there are none: frames, then the openers' handed copies, go
    through chunks of about ``chunk_elements`` (default ``INFERENCE_CHUNK_ELEMENTS``)
    straight into ``feature`` with ``segment_reduce``.

    The numbers stay the same because the order does: frames go in frame order, so each
    step sums its own copies as in one call; a step's handed copy comes after all of them,
    as in ``frame_warping``'s sum + handed; the max takes every own copy before any handed
    one, as ``step_max``. Handed copies are exp of the gathered log rows, which is the
    gathered exp (an elementwise op).
    """
    x = x.contiguous()
    warp = warp_weights(score, out_len)
    own_bucket, handed_bucket = max_steps(warp, out_len)
    b, n_frames, f = x.shape
    chunk = max(1, (chunk_elements or INFERENCE_CHUNK_ELEMENTS) // (b * f))
    out = x.new_zeros(1, b * 3 * out_len + 1, f)
    feature = out[0, :-1].view(b, 3, out_len, f)
    energy = x.new_empty(b, n_frames)
    buffer = x.new_empty(b * min(chunk, n_frames) * f)
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        frames = buffer[: b * (stop - start) * f].view(b, stop - start, f)
        own = warp.own[:, start:stop].unsqueeze(-1)
        step = warp.step[:, start:stop]
        torch.exp(x[:, start:stop], out=frames)
        torch.mean(frames, dim=-1, out=energy[:, start:stop])
        frames.mul_(own)
        _reduce_into_feature(out, frames, step, 0, "sum")
        # As step_max without autograd: all own copies first, then the handed ones.
        _reduce_into_feature(out, frames, own_bucket[:, start:stop], 1, "amax")
        torch.mul(pos_emb[:, start:stop], own, out=frames)
        _reduce_into_feature(out, frames, step, 2, "sum")

    for start in range(0, out_len, chunk):
        stop = min(start + chunk, out_len)
        opener = warp.opener[:, start:stop]
        handed = warp.handed[:, start:stop].unsqueeze(-1)
        copies = gather_rows(x, opener).exp_().mul_(handed)
        feature[:, 0, start:stop].add_(copies).add_(eps).log_()
        _reduce_into_feature(out, copies, handed_bucket[:, start:stop], 1, "amax")
        pos = pos_emb[0].index_select(0, opener.reshape(-1)).view(b, stop - start, f)
        feature[:, 2, start:stop].add_(pos.mul_(handed))
    feature[:, 1].mul_(1.0 / (1.0 - rate)).add_(eps).log_()
    return feature, energy


def guide_loss_and_activeness(energy: Tensor, score: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """Published guide loss and activeness, both shape [1].

    ``energy`` [B, T] is each frame's mean linear energy over the mel bins,
    ``x.exp().mean(-1)`` of the natural-log input x, whatever its sign: the published code
    skips the exp for input with min >= 0 and then crashes, and DiffRes treats its input as
    log-scale everywhere else. A frame is empty when its energy is within 1e-6 of the
    batch's smallest. An item adds its mean empty-frame score (over B) when that exceeds
    0.5 * (1 - rate); its activeness is the std of its non-empty scores. Items with no empty
    frame, as published, add to neither.
    """
    s = score.squeeze(-1)
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
