"""BC-ResNet: shapes at any t, scripting, ONNX, batch independence, size and counted cost."""

from pathlib import Path

import pytest
import torch

from service.bcresnet import BCResNet, SubSpectralNorm, strided_size, sub_band_count
from service.classifier import Classifier, classifier_mflops
from service.export import export_onnx
from service.export.formats import onnx_runner
from service.pipeline import CLASSIFIERS, AudioClassifier, build_classifier, serving_graph


def features(batch: int, channels: int, t: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, channels, t, 40, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t", [1, 2, 25, 50, 101])
def test_output_shape_at_any_length(channels, t):
    torch.manual_seed(0)
    model = BCResNet(channels, 7, 40, width=8).train()
    logits = model(features(4, channels, t, seed=t))
    assert logits.shape == (4, 7)
    logits.sum().backward()  # trains at t = 1 too
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(features(1, channels, t, seed=t)).shape == (1, 7)


@pytest.mark.parametrize("channels", [1, 3])
def test_scripts_and_matches_eager(channels):
    torch.manual_seed(0)  # the weights: not whatever state the tests before left behind
    model = BCResNet(channels, 5, 40).eval()
    scripted = torch.jit.script(model)
    for t in (1, 5, 101):
        x = features(3, channels, t, seed=channels)
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)


def test_onnx_matches_eager_at_batch_1_and_3(tmp_path: Path):
    torch.manual_seed(0)
    model = BCResNet(3, 5, 40).eval()
    path = tmp_path / "bcresnet.onnx"
    export_onnx(model, features(2, 3, 50, seed=0), path, ["feature"], ["logits"],
                {"feature": {0: "batch", 2: "frames"}, "logits": {0: "batch"}})
    run = onnx_runner(path)
    for batch in (1, 3):
        for t in (50, 25):  # the time axis is dynamic too
            x = features(batch, 3, t, seed=batch + t)
            with torch.no_grad():
                expected = model(x)
            torch.testing.assert_close(run(x)[0], expected, rtol=0, atol=1e-4)


def test_serving_graph_with_diffres_exports(tmp_path: Path):
    """The graph the benchmark and the exporter build: DiffRes 0.75 then BC-ResNet."""
    torch.manual_seed(0)
    model = AudioClassifier.build("diffres", 101, 40, 0.75, 5, classifier="bcresnet").eval()
    x = torch.randn(3, 101, 40, generator=torch.Generator().manual_seed(0)) - 6.0
    with torch.no_grad():
        keys = list(model.compressor(x).keys())
    graph = serving_graph(model.compressor, model.classifier, 101, model.out_t_dim, keys)
    names = [*graph.input_names, *graph.output_names]
    path = tmp_path / "model.onnx"
    export_onnx(graph, x, path, names[:1], names[1:], {n: {0: "batch"} for n in names})
    with torch.no_grad():
        expected = graph(x)
    run = onnx_runner(path)
    for batch in (1, 3):
        torch.testing.assert_close(run(x[:batch])[0], expected[0][:batch], rtol=0, atol=1e-4)


def test_batch_items_are_independent_in_eval():
    torch.manual_seed(0)
    model = BCResNet(3, 4, 40).eval()
    x = features(5, 3, 50, seed=1)
    whole = model(x)
    for i in range(5):
        torch.testing.assert_close(model(x[i:i + 1]), whole[i:i + 1], rtol=0, atol=1e-5)


def test_real_size_at_full_resolution():
    """At least 10x the DiffRes estimator (~5 MFLOPs) per 1 s window, a few 100k params."""
    full = BCResNet(1, 12, 40)
    mflops = classifier_mflops(full, 1, 101, 40)
    assert mflops >= 50.0
    assert sum(p.numel() for p in full.parameters()) < 300_000
    diffres = BCResNet(3, 12, 40)
    # time is never strided: the cost of the blocks is linear in t
    half = classifier_mflops(diffres, 3, 50, 40)
    assert half < 0.6 * mflops
    assert classifier_mflops(diffres, 3, 25, 40) == pytest.approx(half / 2, rel=0.02)


def test_mflops_counts_depthwise_and_broadcast_convs_by_hand():
    """classifier_mflops counts Cin / groups x kernel multiply-adds per output element, so the
    depthwise frequency and time convs and the [C, 1, t] branch are counted as they run."""
    model = BCResNet(1, 3, 8, width=2, sub_bands=2)  # stages 2, 3, 4, 5 ch; stem 4; head 8
    t = 3
    f = [4, 4, 2, 1, 1]  # stem, then each stage
    macs = 4 * f[0] * t * 9  # stem 3x3, 1 -> 4

    def block(cin: int, cout: int, f_in: int, f_out: int) -> int:
        expand = cin * cout * f_in * t if cin != cout else 0
        return expand + cout * f_out * t * 3 + cout * t * 3 + cout * cout * t

    cin = 4
    for cout, n, (f_in, f_out) in zip([2, 3, 4, 5], [2, 2, 4, 4], zip(f, f[1:])):
        macs += block(cin, cout, f_in, f_out) + (n - 1) * block(cout, cout, f_out, f_out)
        cin = cout
    macs += 5 * 1 * t + 5 * 8 * t  # depthwise over the last F, then 1x1 to the head
    macs += 16 * 3  # linear on mean and max side by side
    assert classifier_mflops(model, 1, t, 8) == pytest.approx(2 * macs / 1e6)
    assert model.training  # mode restored


def test_helpers():
    assert [strided_size(40, 2), strided_size(5, 2), strided_size(1, 2)] == [20, 3, 1]
    assert [sub_band_count(20, 5), sub_band_count(5, 5), sub_band_count(7, 5)] == [5, 5, 1]
    norm = SubSpectralNorm(2, 5).train()
    x = torch.randn(4, 2, 10, 6) * 3 + torch.arange(10.0).view(1, 1, 10, 1)
    y = norm(x)
    # each (channel, band of 2 bins) is normalised on its own
    for band in range(5):
        part = y[:, 0, 2 * band:2 * band + 2]
        assert abs(part.mean().item()) < 1e-5
        assert part.var(unbiased=False).item() == pytest.approx(1, rel=1e-3)


def test_build_classifier_keeps_the_cnn_default():
    assert set(CLASSIFIERS) == {"cnn", "bcresnet"}
    assert type(AudioClassifier.build("full", 101, 40, 0.0, 5).classifier) is Classifier
    cnn = build_classifier("cnn", 3, 5, 40)
    assert type(cnn) is Classifier and cnn.head.in_features == 2 * 32
    model = AudioClassifier.build("diffres", 101, 40, 0.5, 5, width=8, classifier="bcresnet")
    assert type(model.classifier) is BCResNet and model.classifier.in_channels == 3
    with pytest.raises(ValueError, match="unknown classifier"):
        build_classifier("resnet", 1, 5, 40)


def test_bad_arguments_and_input():
    with pytest.raises(ValueError):
        BCResNet(0, 5, 40)
    with pytest.raises(ValueError):
        BCResNet(3, 5, 40, dropout=1.0)
    with pytest.raises(ValueError, match="expected feature"):
        BCResNet(3, 5, 40)(torch.randn(2, 1, 10, 40))
