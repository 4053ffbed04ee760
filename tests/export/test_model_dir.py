"""export_model_dir: the written ONNX and TorchScript files reproduce eager PyTorch, and the
manifest describes them."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.errors import ExportCheckError, InvalidModel
from service.export import export_model_dir, noise_waveforms
from service.export.formats import RUNNERS
from service.frontend import LogMel
from service.manifest import Manifest, verify_artifacts
from service.pipeline import AudioClassifier, serving_graph

T, F, RATE = 101, 40, 0.5
LABELS = ["dog", "rain", "siren", "speech", "silence"]
FILES = {"model.onnx", "model.pt", "frontend.onnx", "frontend.pt", "manifest.json"}
CHECKED = ("probabilities", "frame_scores")
# TorchScript is deprecated in torch 2.13 but is what the service ships (model.pt).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


def trained_looking(kind: str, seed: int = 0) -> AudioClassifier:
    """A random model with non-trivial BatchNorm statistics and confident logits, so the
    comparison is not between two near-uniform softmaxes."""
    torch.manual_seed(seed)
    model = AudioClassifier.build(kind, T, F, RATE, len(LABELS))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0.0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.classifier.head.weight.mul_(10.0)
    return model.train()  # export must not depend on the caller's mode


def spectrograms(frontend: LogMel, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return frontend(noise_waveforms(batch, (T - 1) * frontend.hop_length, g))


@pytest.fixture(scope="module", params=["diffres", "full"])
def exported(request, tmp_path_factory):
    model = trained_looking(request.param)
    frontend = LogMel()
    out_dir = tmp_path_factory.mktemp(request.param) / "model" / "1"
    manifest = export_model_dir(model.compressor, model.classifier, frontend, out_dir, "model",
                                1, LABELS, metrics={"accuracy": 0.5},
                                dataset={"name": "synthetic"}, training={"epochs": 0})
    return model, frontend, out_dir, manifest


def test_directory_and_manifest(exported):
    model, frontend, out_dir, manifest = exported
    assert {p.name for p in out_dir.iterdir()} == FILES
    assert [p.name for p in out_dir.parent.iterdir()] == ["1"]  # no staging left behind
    assert out_dir.stat().st_mode & 0o777 == 0o755  # readable by a server of another user
    diffres = model.kind == "diffres"
    t = 50 if diffres else T
    assert manifest.compressor.kind == model.kind
    assert manifest.compressor.out_t_dim == t
    assert manifest.compressor.dimension_reduction_rate == (RATE if diffres else 0.0)
    assert (manifest.frontend.type, manifest.frontend.sample_rate, manifest.frontend.hop_length,
            manifest.frontend.n_mels) == ("LogMel", 16000, 160, F)
    np.testing.assert_allclose(manifest.frontend.silence, [np.log(1e-6)] * F, rtol=1e-6)
    assert manifest.labels == LABELS
    assert [(s.name, s.shape) for s in manifest.inputs] == [("spectrogram", [-1, T, F])]
    expected = [("probabilities", [-1, len(LABELS)]), ("frame_scores", [-1, T])]
    if diffres:
        expected += [(n, [-1, t, F]) for n in ("avgpool", "maxpool", "resolution_enc")]
    assert [(s.name, s.shape) for s in manifest.outputs] == expected
    assert [s.shape for s in manifest.frontend_inputs] == [[-1, -1]]
    assert [s.shape for s in manifest.frontend_outputs] == [[-1, -1, F]]
    assert manifest.metrics["accuracy"] == 0.5
    check = manifest.metrics["export_check"]
    for fmt in ("onnx", "torchscript"):
        assert all(check["model"][fmt][n] <= 1e-4 for n in CHECKED)
    tolerances = {s.name: s.tolerance for s in manifest.outputs}
    assert all(check["model"]["onnx"][n] <= tolerances[n] for n in tolerances)
    # the ONNX file declares the same outputs, batch dynamic
    session = ort.InferenceSession(str(out_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    declared = [(o.name, [d if isinstance(d, int) else -1 for d in o.shape])
                for o in session.get_outputs()]
    assert declared == expected


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_exported_model_matches_eager(exported, batch):
    model, frontend, out_dir, manifest = exported
    keys = ["feature", "score", "avgpool", "maxpool", "resolution_enc"]
    if model.kind != "diffres":
        keys = ["feature"]
    # a fresh eval copy of the original weights
    reference = serving_graph(model.compressor, model.classifier, T,
                              manifest.compressor.out_t_dim, keys)
    x = spectrograms(frontend, batch, seed=100 + batch)
    with torch.no_grad():
        eager = [o.numpy() for o in reference(x)]
    session = ort.InferenceSession(str(out_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"spectrogram": x.numpy()})
    with torch.no_grad():
        from_script = [o.numpy() for o in torch.jit.load(str(out_dir / "model.pt"))(x)]
    names = [s.name for s in manifest.outputs]
    for name, e, o, s in zip(names, eager, from_onnx, from_script, strict=True):
        assert o.shape == e.shape == s.shape
        if name in CHECKED:
            np.testing.assert_allclose(o, e, rtol=0, atol=1e-4, err_msg=f"onnx {name}")
            np.testing.assert_allclose(s, e, rtol=0, atol=1e-4, err_msg=f"torchscript {name}")
    assert eager[0].max() > 2 / len(LABELS)  # far from uniform: not trivially met


@pytest.mark.parametrize("batch,n", [(1, 1), (3, 8000), (17, 1777)])
def test_exported_frontend_matches_eager(exported, batch, n):
    _, frontend, out_dir, _ = exported
    wave = noise_waveforms(batch, n, torch.Generator().manual_seed(n))
    with torch.no_grad():
        eager = frontend(wave).numpy()
    session = ort.InferenceSession(str(out_dir / "frontend.onnx"),
                                   providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(None, {"waveform": wave.numpy()})
    from_script = torch.jit.load(str(out_dir / "frontend.pt"))(wave).numpy()
    np.testing.assert_allclose(from_onnx, eager, rtol=0, atol=1e-4)
    np.testing.assert_allclose(from_script, eager, rtol=0, atol=1e-4)


def test_manifest_round_trip_and_checksums(exported, tmp_path):
    _, _, out_dir, manifest = exported
    assert Manifest.read(out_dir) == manifest
    assert verify_artifacts(out_dir, manifest) == []
    copy = shutil.copytree(out_dir, tmp_path / "copy")
    path = copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_artifacts(copy, Manifest.read(copy))
    assert len(problems) == 1 and problems[0].startswith("model.onnx: sha256")
    (copy / "frontend.pt").unlink()
    assert "frontend.pt: missing" in verify_artifacts(copy, Manifest.read(copy))


def test_failed_check_leaves_nothing(tmp_path, monkeypatch):
    real_runner = RUNNERS["onnx"]

    def off_by_a_little(path):
        run = real_runner(path)
        return lambda x: tuple(o + 1e-3 for o in run(x))

    monkeypatch.setitem(RUNNERS, "onnx", off_by_a_little)
    out_dir = tmp_path / "m" / "1"
    model = trained_looking("full")
    with pytest.raises(ExportCheckError, match="model.onnx: output 'probabilities' differs"):
        export_model_dir(model.compressor, model.classifier, LogMel(), out_dir, "m", 1, LABELS)
    assert list((tmp_path / "m").iterdir()) == []


def test_refuses_labels_that_do_not_match_the_classes(tmp_path):
    model = trained_looking("avgpool")
    with pytest.raises(InvalidModel, match="gives 5 logits, but 2 labels"):
        export_model_dir(model.compressor, model.classifier, LogMel(), tmp_path / "a", "m", 1,
                         LABELS[:2])


def test_refuses_a_front_end_of_other_bands(tmp_path):
    model = trained_looking("avgpool")
    with pytest.raises(InvalidModel, match=r"compressor \(AvgPool\) fails on a \[1, 101, 64\]"):
        export_model_dir(model.compressor, model.classifier, LogMel(n_mels=64), tmp_path / "a",
                         "m", 1, LABELS)


def test_refuses_a_directory_that_holds_files(tmp_path):
    model = trained_looking("avgpool")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.onnx").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        export_model_dir(model.compressor, model.classifier, LogMel(), tmp_path / "b", "m", 1,
                         LABELS)


@pytest.mark.parametrize("exported", ["diffres"], indirect=True)
def test_warping_exports_as_row_scatters(exported):
    """The warping's [B, N, F] reductions are row-wise ScatterND nodes: the element-wise
    ScatterElements (and the If wrappers) they otherwise export to run ~10x slower in
    onnxruntime, the largest share of a batch (benchmarks/onnx_versions.py)."""
    import onnx

    _, _, out_dir, _ = exported
    ops = [node.op_type for node in onnx.load(str(out_dir / "model.onnx")).graph.node]
    assert ops.count("ScatterND") == 4  # avgpool and resolution_enc sums, two maxima
    assert "If" not in ops
