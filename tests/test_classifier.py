"""Classifier: shapes at any t, scripting, size and cost."""

import pytest
import torch

from service.classifier import Classifier, classifier_mflops


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t", [1, 5, 50, 101])
def test_output_shape_at_any_length(channels, t):
    torch.manual_seed(0)
    model = Classifier(channels, 7, 40).train()
    logits = model(torch.randn(4, channels, t, 40))
    assert logits.shape == (4, 7)
    logits.sum().backward()  # trains at t = 1 too
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(torch.randn(1, channels, t, 40)).shape == (1, 7)


@pytest.mark.parametrize("channels", [1, 3])
def test_scripts_and_matches_eager(channels):
    torch.manual_seed(0)  # the weights: not whatever state the tests before left behind
    model = Classifier(channels, 5, 40).eval()
    scripted = torch.jit.script(model)
    g = torch.Generator().manual_seed(channels)
    for t in (1, 5, 101):
        x = torch.randn(3, channels, t, 40, generator=g)
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)


def test_batch_items_are_independent_in_eval():
    torch.manual_seed(0)  # the weights: not whatever state the tests before left behind
    model = Classifier(3, 4, 40).eval()
    x = torch.randn(5, 3, 50, 40, generator=torch.Generator().manual_seed(1))
    whole = model(x)
    for i in range(5):
        torch.testing.assert_close(model(x[i:i + 1]), whole[i:i + 1], rtol=0, atol=1e-5)


def test_small_and_cheap():
    model = Classifier(3, 50, 40)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert n_bytes < 1_000_000
    mflops = classifier_mflops(model, 3, 101, 40)
    assert 1.0 < mflops < 20.0
    # cost follows the number of frames: half the frames, about half the FLOPs
    assert classifier_mflops(model, 3, 50, 40) < 0.6 * mflops


def test_mflops_counts_by_hand():
    model = Classifier(1, 10, 8, width=4)  # widths 1, 2, 4, 4; maps 4x8, 2x4, 1x2, 1x1
    # outputs x (Cin x 3 x 3) per conv, then the linear layer
    macs = (4 * 8 * 1) * 9 + (2 * 4 * 2) * 9 + (1 * 2 * 4) * 2 * 9 + (1 * 1 * 4) * 4 * 9
    macs += (2 * 4) * 10  # the head reads mean and max side by side
    assert classifier_mflops(model, 1, 4, 8) == pytest.approx(2 * macs / 1e6)
    assert model.training  # mode restored


def test_bad_arguments_and_input():
    with pytest.raises(ValueError):
        Classifier(0, 5, 40)
    with pytest.raises(ValueError):
        Classifier(3, 5, 40, dropout=1.0)
    with pytest.raises(ValueError, match="expected feature"):
        Classifier(3, 5, 40)(torch.randn(2, 1, 10, 40))
