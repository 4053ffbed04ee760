"""The published module's reference vectors (tests/fixtures/pydiffres_*.npz), and the
machine-independent yardsticks the parity test and report measure against them.

The published warping is discontinuous in its scores, and ill-conditioned where it is
continuous: a step boundary sits where a cumulative score of size ~t crosses an integer, so
one ulp of the score total (a convolution that rounds differently, a sum added in another
order) moves boundaries by up to ~t ulps of 1, and the step's log-mean by far more in a mel
bin where the boundary frame is loud. Which way a machine rounds is not ours to assert; what
holds everywhere is measured here: scores within a few ulps, the warping exact when fed the
published scores, and every other difference confined to rows next to a boundary that moved.
"""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from service.diffres import DiffRes
from service.diffres import functional as Fn

FIXTURES = Path(__file__).parent.parent / "fixtures"
CASES = sorted(p.stem for p in FIXTURES.glob("pydiffres_*.npz"))

# The tolerances: max abs difference per output, relative L2 on gradients.
OUTPUT_TOL = {"score": 1e-4, "avgpool": 1e-4, "resolution_enc": 1e-4, "guide_loss": 1e-4,
              "activeness": 1e-4, "maxpool": 1e-3, "feature": 1e-3}
ROW_OUTPUTS = ("avgpool", "maxpool", "resolution_enc")
GRAD_TOL = 1e-3
# Scores: at most this many ulps of the item's largest score from the published ones.
SCORE_ULPS = 16
# A warping weight (in [0, 1]) that moved by more than this (8 ulps of 1) moved its boundary.
WEIGHT_ROUNDING = 1e-6


def load_case(name: str) -> tuple[DiffRes, dict[str, np.ndarray]]:
    """The reference arrays and a DiffRes in eval mode holding the published weights."""
    data = dict(np.load(FIXTURES / f"{name}.npz"))
    model = DiffRes(int(data["in_t_dim"]), int(data["in_f_dim"]),
                    float(data["dimension_reduction_rate"]))
    state = {k.removeprefix("state/"): torch.from_numpy(v)
             for k, v in data.items() if k.startswith("state/")}
    model.load_state_dict(state, strict=True)
    return model.eval(), data


def score_ulps(score: Tensor, published: np.ndarray) -> float:
    """Largest score difference, in ulps of each item's largest published score."""
    scale = np.spacing(published.max(axis=1, keepdims=True).astype(np.float32))
    return float((np.abs(score.detach().numpy() - published) / scale).max())


def row_errors(out: Tensor, published: np.ndarray) -> np.ndarray:
    """[B, t, F] outputs -> [B, t], each output step's max abs difference over the mel bins."""
    return np.abs(out.detach().numpy() - published).max(axis=-1)


def _mark(rows: Tensor, step: Tensor, moved: Tensor) -> None:
    """Mark ``rows`` [B, t + 1] at ``step`` [B, N] wherever ``moved`` [B, N]."""
    rows.scatter_reduce_(1, step, moved, "amax")


def moved_rows(score: Tensor, published: Tensor, out_len: int) -> Tensor:
    """[B, t] bool: output steps next to a boundary that moved between the warping of ``score``
    and of the ``published`` scores (both [B, T, 1]): a frame changed step or max-pool
    bucket, or a weight the step takes moved by more than ``WEIGHT_ROUNDING``.

    A step's weights change only when one of its two boundaries moves, so these are exactly
    the rows a different rounding of the scores may move.
    """
    ours, theirs = Fn.warp_weights(score.detach(), out_len), Fn.warp_weights(published, out_len)
    ours_max, theirs_max = Fn.max_steps(ours, out_len), Fn.max_steps(theirs, out_len)
    frame_moved = ((ours.step != theirs.step) | (ours_max[0] != theirs_max[0])
                   | ((ours.own - theirs.own).abs() > WEIGHT_ROUNDING)).to(torch.uint8)
    rows = torch.zeros(score.shape[0], out_len + 1, dtype=torch.uint8)
    for step in (ours.step, theirs.step, ours_max[0], theirs_max[0]):
        _mark(rows, step, frame_moved)
    handed_moved = ((ours.opener != theirs.opener) | (ours_max[1] != theirs_max[1])
                    | ((ours.handed - theirs.handed).abs() > WEIGHT_ROUNDING)).to(torch.uint8)
    for step in (ours_max[1], theirs_max[1]):
        _mark(rows, step, handed_moved)
    return (rows[:, :out_len] | handed_moved).bool()


def forward_with_scores(model: DiffRes, x: Tensor, published: Tensor) -> dict[str, Tensor]:
    """The module's forward with its normalised scores' values replaced by ``published``
    [B, T, 1], their gradient still flowing through the module's own scores: the published
    step assignment with our computation of everything around it."""
    t = model.output_seq_length
    rate = model.dimension_reduction_rate
    score = model.importance(x)
    score = score + (published - score).detach()
    linear = x.exp()
    avgpool, maxpool, enc = Fn.frame_warping(linear, score, model.pos_emb, t, rate)
    guide, active = Fn.guide_loss_and_activeness(linear.mean(dim=-1), score, rate)
    return {"score": score, "avgpool": avgpool, "maxpool": maxpool, "resolution_enc": enc,
            "feature": torch.stack([avgpool, maxpool, enc], dim=1), "guide_loss": guide,
            "activeness": active}


def gradient_errors(out: dict[str, Tensor], x: Tensor, model: DiffRes,
                    ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Backpropagate the reference loss (feature . cotangent + guide_loss) through ``out`` and
    return the relative L2 error of the gradient of ``x`` and of each trainable parameter."""
    model.zero_grad()
    x.grad = None
    loss = (out["feature"] * torch.from_numpy(ref["cotangent"])).sum() + out["guide_loss"].sum()
    loss.backward()

    def relative(grad: Tensor, published: np.ndarray) -> float:
        return float(np.linalg.norm(grad.numpy() - published) / np.linalg.norm(published))

    errors = {"x": relative(x.grad, ref["grad/x"])}
    for name, param in model.named_parameters():
        if param.requires_grad:
            errors[name] = relative(param.grad, ref[f"grad/state/{name}"])
    return errors
