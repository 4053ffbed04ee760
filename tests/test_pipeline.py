"""AudioClassifier and ServingGraph: every compressor kind trains, scripts and exports."""

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.diffres import DiffRes, FullResolution
from service.export import export_onnx
from service.manifest import COMPRESSOR_KINDS
from service.pipeline import (
    COMPRESSORS,
    AudioClassifier,
    CompressingServingGraph,
    FeatureOnly,
    ServingGraph,
    build_compressor,
    compressor_kind,
    serving_graph,
)

T, F, RATE, CLASSES = 101, 40, 0.5, 6
KINDS = sorted(COMPRESSORS)


def log_mel_like(b: int, seed: int = 0) -> torch.Tensor:
    """[b, T, F] log power: loud and quiet stretches, and digital silence in item 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, F, generator=g) * 1.5 - 4.0
    x[0, 30:50] = float(np.log(1e-6))
    return x


def graph_of(model: AudioClassifier) -> ServingGraph:
    """The serving graph export builds: the compressor's keys from a dry run."""
    with torch.no_grad():
        out = copy.deepcopy(model).eval().compressor(log_mel_like(1))
    keys = [k for k, v in out.items() if v is not None]
    return serving_graph(model.compressor, model.classifier, T, model.out_t_dim, keys)


def build(kind: str, seed: int = 0) -> AudioClassifier:
    torch.manual_seed(seed)
    return AudioClassifier.build(kind, T, F, RATE, CLASSES)


def test_build_compressor():
    for kind, cls in COMPRESSORS.items():
        compressor = build_compressor(kind, T, F, RATE)
        assert type(compressor) is cls
    assert build_compressor("diffres", T, F, RATE).output_seq_length == 50
    assert isinstance(build_compressor("full", T, F, 0.9), FullResolution)
    assert build_compressor("full", T, F, 0.9).output_seq_length == T  # rate ignored
    with pytest.raises(ValueError, match="unknown compressor"):
        build_compressor("wavelet", T, F, RATE)


@pytest.mark.parametrize("kind", KINDS)
def test_training_forward(kind):
    model = build(kind).train()
    out = model(log_mel_like(4))
    assert set(out) == {"logits", "score", "guide_loss", "activeness"}
    assert out["logits"].shape == (4, CLASSES)
    assert out["score"].shape == (4, T, 1)
    assert out["guide_loss"].shape == (1,) and out["activeness"].shape == (1,)
    t = model.out_t_dim
    if kind == "diffres":
        # each score <= 1, summing to t as far as the published top-up reaches
        assert torch.all((out["score"] >= 0) & (out["score"] <= 1 + 1e-6))
        assert torch.all(out["score"].sum(dim=(1, 2)) <= t + 1e-3)
    else:
        assert torch.all(out["score"] == t / T)
    loss = out["logits"].logsumexp(1).mean() + out["guide_loss"].sum()
    loss.backward()
    if kind == "diffres":  # the importance estimator learns through the warping
        assert model.compressor.model.blks[0].cnn1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_scripted_match_eager(kind):
    model = build(kind).eval()
    x = log_mel_like(3, seed=1)
    scripted = torch.jit.script(model)
    for key, value in model(x).items():
        torch.testing.assert_close(scripted(x)[key], value, rtol=0, atol=1e-5)

    graph = graph_of(model)
    assert isinstance(graph, CompressingServingGraph) == (kind == "diffres")
    eager = graph(x)
    assert len(eager) == len(graph.output_names) == (5 if kind == "diffres" else 2)
    assert eager[0].shape == (3, CLASSES) and eager[1].shape == (3, T)
    torch.testing.assert_close(eager[0].sum(1), torch.ones(3))
    for a, b in zip(torch.jit.script(graph)(x), eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_serving_graph_copies_in_eval_mode():
    model = build("diffres").train()
    graph = graph_of(model)
    assert model.training and not graph.training
    assert graph.output_names[2:] == ["avgpool", "maxpool", "resolution_enc"]
    x = log_mel_like(2)
    avgpool, maxpool, enc = graph(x)[2:]
    reference = model.eval().compressor(x)
    torch.testing.assert_close(avgpool, reference["avgpool"])
    torch.testing.assert_close(maxpool, reference["maxpool"])
    torch.testing.assert_close(enc, reference["resolution_enc"])
    assert avgpool.shape == (2, 50, F)


def test_kind_must_be_known():
    with pytest.raises(ValueError):
        AudioClassifier(DiffRes(T, F, RATE), torch.nn.Identity(), "magic")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "diffres"])  # DiffRes: test_export
def test_onnx_dynamic_batch(kind, tmp_path):
    graph = graph_of(build(kind))
    names = ["spectrogram", *graph.output_names]
    path = tmp_path / "model.onnx"
    export_onnx(graph, log_mel_like(3), path, names[:1], names[1:],
                {name: {0: "batch"} for name in names})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == graph.output_names
    for batch in (1, 5):
        x = log_mel_like(batch, seed=batch)
        for a, b in zip(session.run(None, {"spectrogram": x.numpy()}), graph(x), strict=True):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=1e-4)


def test_our_kinds_are_the_contracts_kinds_but_custom():
    assert sorted([*KINDS, "custom"]) == sorted(COMPRESSOR_KINDS)


def test_kinds_of_our_compressors_and_others():
    assert [compressor_kind(build_compressor(k, T, F, RATE)) for k in KINDS] == KINDS
    assert compressor_kind(torch.nn.Identity()) == "custom"


def test_a_compressor_returning_a_tensor_serves_uniform_scores():
    """A compressor of the user's that returns only its feature map still serves: every frame
    gets the uniform score t / T."""
    pool = torch.nn.AvgPool2d((2, 1))
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(CLASSES))
    feature = pool(log_mel_like(1).unsqueeze(1))
    classifier(feature)  # materialise the lazy layer
    graph = serving_graph(FeatureOnly(torch.nn.Sequential(_Unsqueeze(), pool)), classifier, T,
                          feature.shape[-2], ["feature"])
    probabilities, scores = torch.jit.script(graph)(log_mel_like(2))
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2))
    assert torch.all(scores == feature.shape[-2] / T)


class _Unsqueeze(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)
