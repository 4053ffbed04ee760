"""The pure DiffRes functions, one behaviour at a time."""

import torch

from service.diffres import functional as Fn


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
