"""The fixed-resolution baselines equal their published definitions."""

import pytest
import torch

from service.diffres import AvgMaxPool, AvgPool, ChangeHopSize, ConvAvgPool, FullResolution


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded input: the same numbers in any test order, whatever the global RNG holds."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t,rate", [(101, 0.5), (101, 0.75), (1000, 0.9), (37, 0.2)])
def test_avgpool_equals_adaptive_avg_pool(t: int, rate: float) -> None:
    x = randn(3, t, 16, seed=t)
    out = AvgPool(t, 16, rate)(x)
    n = out["feature"].shape[2]
    expected = torch.nn.AdaptiveAvgPool1d(n)(x.transpose(1, 2)).transpose(1, 2).unsqueeze(1)
    torch.testing.assert_close(out["feature"], expected)
    assert out["score"] is None


@pytest.mark.parametrize("t,rate", [(101, 0.5), (1000, 0.75), (37, 0.2)])
def test_avgmaxpool_sums_adaptive_avg_and_max(t: int, rate: float) -> None:
    x = randn(2, t, 8, seed=t)
    out = AvgMaxPool(t, 8, rate)(x)
    n = out["feature"].shape[2]
    xt = x.transpose(1, 2)
    expected = (torch.nn.AdaptiveAvgPool1d(n)(xt) + torch.nn.AdaptiveMaxPool1d(n)(xt))
    torch.testing.assert_close(out["feature"], expected.transpose(1, 2).unsqueeze(1))


def test_change_hop_size_keeps_uniformly_spaced_frames() -> None:
    x = torch.arange(101.0).view(1, 101, 1).expand(1, 101, 4)
    out = ChangeHopSize(101, 4, 0.75)(x)
    kept = [int(v) for v in torch.linspace(0, 100, 25).tolist()]
    assert out["feature"][0, 0, :, 0].long().tolist() == kept


def test_baselines_load_published_state_dicts() -> None:
    """The published baselines hold only the position table."""
    state = AvgPool(101, 40, 0.5).state_dict()
    assert list(state) == ["pos_emb"]
    for cls in (AvgMaxPool, ChangeHopSize):
        cls(101, 40, 0.5).load_state_dict(state)


@pytest.mark.parametrize("cls", [AvgPool, AvgMaxPool, ChangeHopSize, ConvAvgPool, FullResolution])
def test_baselines_script_and_keep_feature_shape(cls) -> None:
    torch.manual_seed(0)  # ConvAvgPool's weights
    module = cls(101, 40, 0.5).eval()
    x = randn(2, 101, 40)
    eager = module(x)["feature"]
    torch.testing.assert_close(torch.jit.script(module)(x)["feature"], eager)
    expected_t = 101 if cls is FullResolution else 50
    assert eager.shape == (2, 1, expected_t, 40)
