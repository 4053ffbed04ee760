"""DiffRes against the dense re-derivation of the published algorithm, and its contract."""

import pytest
import torch

from service.diffres import DiffRes
from service.diffres import functional as Fn
from service.diffres.dense import dense_diffres
from service.diffres.estimator import channel_plan
from tests.diffres.probes import LargestTensor

# (T, F, rate, B): several sizes, the T=3000 / 0.9 -> 299 quirk, odd T and F, and B=1.
SHAPES = [(101, 40, 0.25, 4), (400, 64, 0.5, 3), (3000, 128, 0.9, 1), (257, 13, 0.6, 2),
          (1000, 128, 0.75, 2), (64, 7, 0.9, 5)]
KEYS = ["score", "avgpool", "maxpool", "resolution_enc", "feature", "guide_loss", "activeness"]


def log_mel_like(b: int, t: int, f: int, seed: int = 0) -> torch.Tensor:
    """Natural-log spectrogram with loud and quiet stretches and runs of digital silence."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, f, generator=g) * 1.5 - 4.0
    x = x + 3.0 * torch.sin(torch.arange(t) / 7.0).view(1, t, 1)
    for i in range(b):
        start = int(torch.randint(0, max(t - t // 5, 1), (1,), generator=g))
        x[i, start:start + t // 6] = -15.0
    return x


def model_for(t: int, f: int, rate: float, dtype: torch.dtype, seed: int = 0) -> DiffRes:
    torch.manual_seed(seed)
    return DiffRes(t, f, rate).to(dtype).train()


def both_forms(t: int, f: int, rate: float, b: int, dtype: torch.dtype):
    model = model_for(t, f, rate, dtype)
    x = log_mel_like(b, t, f).to(dtype).requires_grad_(True)
    x_dense = x.detach().clone().requires_grad_(True)
    fast = model(x)
    raw = torch.sigmoid(model.model(x_dense.permute(0, 2, 1)).permute(0, 2, 1))
    slow = dense_diffres(x_dense, raw, model.pos_emb, rate)
    return model, (x, fast), (x_dense, slow)


@pytest.mark.parametrize("t,f,rate,b", SHAPES)
def test_train_mode_forward_and_backward_equal_dense_in_float64(t, f, rate, b) -> None:
    """In float64 the two formulations are the same function: outputs and gradients agree."""
    model, (x, fast), (x_dense, slow) = both_forms(t, f, rate, b, torch.float64)
    for key in KEYS:
        torch.testing.assert_close(fast[key], slow[key], atol=1e-7, rtol=1e-7, msg=key)
    cot = torch.randn(fast["feature"].shape, dtype=fast["feature"].dtype,
                      generator=torch.Generator().manual_seed(1))
    grads = []
    for xx, out in ((x, fast), (x_dense, slow)):
        model.zero_grad()
        ((out["feature"] * cot).sum() + out["guide_loss"].sum()).backward()
        grads.append([xx.grad] + [p.grad.clone() for p in model.parameters() if p.requires_grad])
    for fast_g, slow_g in zip(*grads):
        torch.testing.assert_close(fast_g, slow_g, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("t,f,rate,b", SHAPES[:2] + SHAPES[3:4])
def test_train_mode_float32_close_to_dense(t, f, rate, b) -> None:
    _, (_, fast), (_, slow) = both_forms(t, f, rate, b, torch.float32)
    for key in KEYS:
        torch.testing.assert_close(fast[key], slow[key], atol=1e-3, rtol=1e-4, msg=key)


def test_output_steps_each_gather_unit_weight() -> None:
    """Every output step receives a total weight of 1 (the published invariant)."""
    model = model_for(400, 64, 0.5, torch.float64).eval()
    x = log_mel_like(3, 400, 64).double()
    score = model.importance(x)
    warp = Fn.warp_weights(score, 200)
    total = (Fn.segment_reduce(warp.own.unsqueeze(-1), warp.step, 200, "sum")[:, :200]
             + warp.handed.unsqueeze(-1))
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-9, rtol=0)
    assert (score <= 1).all() and torch.allclose(score.sum(dim=(1, 2)), torch.full((3,), 200.0,
                                                                                   dtype=torch.float64))


def test_no_tensor_scales_with_t_times_t() -> None:
    """Forward and backward never hold anything of size B*T*t (the dense matrix)."""
    b, t, f, rate = 2, 4000, 8, 0.5
    model = model_for(t, f, rate, torch.float32)
    x = log_mel_like(b, t, f).requires_grad_(True)
    with LargestTensor() as probe:
        out = model(x)
        (out["feature"].sum() + out["guide_loss"].sum()).backward()
    assert probe.largest <= 3 * b * t * f * 2  # O(B*T*F) only
    assert probe.largest < b * t * model.output_seq_length


def test_scripted_module_matches_eager() -> None:
    model = model_for(101, 40, 0.5, torch.float32).eval()
    scripted = torch.jit.script(model)
    x = log_mel_like(3, 101, 40)
    eager, script = model(x), scripted(x)
    for key in KEYS:
        torch.testing.assert_close(script[key], eager[key], msg=key)


def test_non_log_input_is_treated_as_log_scale() -> None:
    """The published guide loss crashes when min(x) >= 0; ours exponentiates as always."""
    model = model_for(101, 40, 0.5, torch.float64).eval()
    x = log_mel_like(2, 101, 40).double() + 20.0
    assert x.min() >= 0
    out = model(x)
    raw = torch.sigmoid(model.model(x.permute(0, 2, 1)).permute(0, 2, 1))
    slow = dense_diffres(x, raw, model.pos_emb, 0.5)
    assert torch.isfinite(out["guide_loss"]).all() and torch.isfinite(out["activeness"]).all()
    torch.testing.assert_close(out["guide_loss"], slow["guide_loss"])
    torch.testing.assert_close(out["activeness"], slow["activeness"])


def test_items_do_not_influence_each_other_in_eval_mode() -> None:
    model = model_for(200, 40, 0.75, torch.float64).eval()
    x = log_mel_like(4, 200, 40).double()
    batch = model(x)
    for i in range(4):
        alone = model(x[i:i + 1])
        for key in ["score", "avgpool", "maxpool", "resolution_enc"]:
            torch.testing.assert_close(alone[key][0], batch[key][i], msg=key)


def test_guide_loss_and_activeness_train_with_autograd() -> None:
    model = model_for(101, 40, 0.5, torch.float32)
    out = model(log_mel_like(4, 101, 40))
    out["guide_loss"].sum().backward()
    grads = [p.grad for p in model.model.parameters()]
    assert out["guide_loss"].item() > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("f,plan", [(128, [128, 64, 32, 16, 8, 1]), (64, [64, 64, 32, 16, 16, 1]),
                                    (40, [40, 40, 20, 10, 10, 1]), (3, [3, 3, 1, 1, 1, 1]),
                                    (256, [256, 128, 64, 32, 16, 1])])
def test_channel_plans(f: int, plan: list[int]) -> None:
    assert channel_plan(f) == plan


@pytest.mark.parametrize("f", [1, 13, 80, 200])
def test_any_mel_bin_count_works(f: int) -> None:
    model = model_for(60, f, 0.5, torch.float32).eval()
    out = model(log_mel_like(2, 60, f))
    assert out["feature"].shape == (2, 3, 30, f)


@pytest.mark.parametrize("kwargs", [dict(dimension_reduction_rate=1.0), dict(in_t_dim=0),
                                    dict(in_t_dim=3, dimension_reduction_rate=0.9)])
def test_bad_constructor_arguments_raise(kwargs) -> None:
    args = dict(in_t_dim=100, in_f_dim=40, dimension_reduction_rate=0.5) | kwargs
    with pytest.raises(ValueError):
        DiffRes(**args)


def test_wrong_input_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"\[B, 101, 40\]"):
        DiffRes(101, 40, 0.5)(torch.zeros(1, 100, 40))


def test_visualize_writes_one_png_per_item(tmp_path) -> None:
    model = model_for(101, 40, 0.5, torch.float32).eval()
    with torch.no_grad():
        ret = model(log_mel_like(2, 101, 40))
    paths = model.visualize(ret, savepath=str(tmp_path))
    assert [p.split("/")[-1] for p in paths] == ["0.png", "1.png"]
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in ["0.png", "1.png"])


def test_long_inputs_run_in_chunks_with_the_same_result() -> None:
    """Eval-mode chunking of the estimator changes nothing but speed."""
    torch.manual_seed(0)
    model = DiffRes(9000, 16, 0.75).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = log_mel_like(2, 9000, 16).permute(0, 2, 1)
    chunked = model.model(x)
    model.model.chunk = 10**9
    torch.testing.assert_close(chunked, model.model(x), atol=1e-6, rtol=1e-6)
    assert model.model.halo == 20  # 5 blocks x 2 convs x (kernel 5 // 2)


# (T, F, rate, B, frames per chunk or None for the default): T not a multiple of the chunk,
# T below one chunk, the default chunk, B=1 and 3, the T=3000 / 0.9 -> 299 quirk.
INFERENCE_CASES = [(3000, 128, 0.9, 1, 256), (1000, 128, 0.75, 3, 384), (1300, 40, 0.5, 3, 512),
                   (200, 40, 0.9, 1, 512), (700, 128, 0.5, 3, None), (2000, 40, 0.75, 1, 300)]


@pytest.mark.parametrize("t,f,rate,b,chunk", INFERENCE_CASES)
@pytest.mark.parametrize("no_autograd", [torch.inference_mode, torch.no_grad])
def test_inference_path_is_bit_identical_to_autograd_path(t, f, rate, b, chunk, no_autograd,
                                                          monkeypatch) -> None:
    if chunk is not None:
        monkeypatch.setattr(Fn, "INFERENCE_CHUNK_ELEMENTS", chunk * b * f)
    model = model_for(t, f, rate, torch.float32).eval()
    x = log_mel_like(b, t, f, seed=t)
    with no_autograd():
        fast = model(x)
    with torch.enable_grad():
        slow = model(x.clone().requires_grad_(True))
    assert fast["avgpool"].data_ptr() == fast["feature"].data_ptr()  # the inference path ran
    assert slow["feature"].grad_fn is not None
    assert fast["guide_loss"].item() > 0  # the silent stretches count
    for key in KEYS:
        assert torch.equal(fast[key], slow[key].detach()), key


def test_scripted_module_keeps_only_the_autograd_path() -> None:
    code = torch.jit.script(model_for(101, 40, 0.5, torch.float32).eval()).code
    assert "functional.frame_warping\n" in code
    assert "needs_graph" not in code and "frame_warping_from_log" not in code
