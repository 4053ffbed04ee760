"""The pure DiffRes functions, one behaviour at a time."""

import pytest
import torch

from service.diffres import functional as Fn
from tests.diffres.probes import LargestTensor


def test_step_max_sends_the_gradient_to_the_earliest_tied_frame() -> None:
    """As the published scatter_max: runs of digital silence tie, and one frame wins."""
    own = torch.tensor([[[2.0], [5.0], [5.0], [1.0], [3.0]]], requires_grad=True)
    own_step = torch.tensor([[0, 0, 0, 1, 1]])
    handed = torch.tensor([[[0.5], [3.0]]], requires_grad=True)
    opener = torch.tensor([[3, 5]])  # frame 5 opens step 2 and hands step 1 a copy
    peak = Fn.step_max(own, own_step, handed, torch.tensor([[0, 1]]), opener, 2)
    peak.sum().backward()
    assert peak.flatten().tolist() == [5.0, 3.0]
    assert own.grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert handed.grad.flatten().tolist() == [0.0, 0.0]


def test_step_max_gives_no_gradient_when_the_initial_zero_wins() -> None:
    own = torch.zeros(1, 3, 1, requires_grad=True)
    handed = torch.zeros(1, 1, 1, requires_grad=True)
    zeros = torch.zeros(1, 3, dtype=torch.long)
    peak = Fn.step_max(own, zeros, handed, zeros[:, :1], zeros[:, :1], 1)
    peak.sum().backward()
    assert peak.item() == 0.0
    assert own.grad.abs().sum().item() == 0.0 and handed.grad.abs().sum().item() == 0.0


def test_step_max_without_autograd_is_a_plain_max() -> None:
    own = torch.tensor([[[1.0, -1.0], [4.0, -2.0]]])
    handed = torch.tensor([[[6.0, -3.0]]])
    with torch.no_grad():
        peak = Fn.step_max(own, torch.tensor([[0, 0]]), handed, torch.tensor([[1]]),
                           torch.tensor([[1]]), 2)
    assert peak.tolist() == [[[4.0, 0.0], [6.0, 0.0]]]


def _scores(b: int, t: int, out_len: int, seed: int) -> torch.Tensor:
    """Normalised scores, with a few leading zeros (their frames go nowhere)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(b, t, 1, generator=g) * 0.98 + 0.01
    raw[:, :3] = 0.0
    return Fn.normalize_scores(raw, out_len)


# (B, T, F, rate, frames per chunk): T a multiple of the chunk and not, T below one chunk,
# one frame per chunk, and the T=3000 / 0.9 -> 299 quirk.
WARP_CASES = [(2, 1024, 16, 0.75, 256), (3, 1000, 40, 0.5, 384), (1, 3000, 128, 0.9, 512),
              (3, 200, 128, 0.75, 512), (2, 50, 8, 0.5, 1), (1, 333, 40, 0.9, 64)]


@pytest.mark.parametrize("b,t,f,rate,chunk", WARP_CASES)
def test_frame_warping_from_log_is_bit_identical_to_frame_warping(b, t, f, rate, chunk) -> None:
    out_len = Fn.output_length(t, rate)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(b, t, f, generator=g) * 2.0 - 4.0
    x[:, t // 3:t // 2] = -15.0
    score = _scores(b, t, out_len, seed=t)
    pos_emb = Fn.sinusoidal_position_table(t, f)
    with torch.no_grad():
        feature, energy = Fn.frame_warping_from_log(x, score, pos_emb, out_len, rate,
                                                    chunk_elements=chunk * b * f)
        expected = Fn.frame_warping(x.exp(), score, pos_emb, out_len, rate)
    assert (Fn.warp_weights(score, out_len).step[:, :3] == out_len).all()  # sent nowhere
    assert feature.shape == (b, 3, out_len, f) and feature.is_contiguous()
    for channel, want in enumerate(expected):
        assert torch.equal(feature[:, channel], want), channel
    assert torch.equal(energy, x.exp().mean(dim=-1))


def test_frame_warping_from_log_holds_no_input_sized_temporary() -> None:
    b, t, f, rate = 2, 4000, 16, 0.75
    out_len = Fn.output_length(t, rate)
    x = torch.randn(b, t, f, generator=torch.Generator().manual_seed(0)) - 4.0
    score = _scores(b, t, out_len, seed=0)
    pos_emb = Fn.sinusoidal_position_table(t, f)
    with torch.inference_mode(), LargestTensor(fresh_only=True) as probe:
        Fn.frame_warping_from_log(x, score, pos_emb, out_len, rate, chunk_elements=256 * b * f)
    assert probe.largest == b * 3 * out_len * f + f  # the output, and its sink row


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_needs_graph_only_without_autograd_or_tracing() -> None:
    x = torch.zeros(2)
    leaf = torch.zeros(2, requires_grad=True)
    assert not Fn.needs_graph(x)
    assert Fn.needs_graph(x, leaf)
    with torch.no_grad():
        assert not Fn.needs_graph(x, leaf)
    with torch.inference_mode():
        assert not Fn.needs_graph(x)
    seen = []

    def traced(y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            seen.append(Fn.needs_graph(y))
        return y + 1

    torch.jit.trace(traced, x, check_trace=False)
    assert seen == [True]
