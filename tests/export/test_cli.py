"""``python -m service export``: a factory of the user's modules, a labels file, a pydiffres
state dict; errors end in one line that says what to fix, with exit status 2."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.cli import main
from service.manifest import Manifest
from tests.diffres.reference import load_case

FACTORY = '''
import torch
from service.frontend import LogMel
from tests.export.conftest import TinyCNN, diffres_modules


def build():
    compressor, classifier = diffres_modules()
    return {"frontend": LogMel(n_mels=40), "compressor": compressor, "classifier": classifier}


def without_compressor():
    return {"frontend": LogMel(n_mels=40), "classifier": TinyCNN(3)}


def without_classifier():
    return {"frontend": LogMel(n_mels=40)}
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "user_factory.py").write_text(FACTORY)
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nowl\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_exports_from_a_factory(workdir, capsys):
    code = main(["export", "--factory", "user_factory:build", "--labels", "labels.txt",
                 "--name", "mine", "--version", "2", "--store", "store", "--formats", "onnx"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "exported store/mine/2: frontend.onnx, model.onnx" in out
    manifest = Manifest.read(workdir / "store" / "mine" / "2")
    assert manifest.labels == ["cat", "dog", "owl"] and manifest.backends == ["onnx"]


def test_a_pydiffres_state_dict_serves_the_published_scores(workdir, capsys):
    """The published module's own weights, loaded from a state dict file, exported: the
    served frame scores are the published ones."""
    _, ref = load_case("pydiffres_t101_f40_r025")
    state = {k.removeprefix("state/"): torch.from_numpy(v) for k, v in ref.items()
             if k.startswith("state/")}
    torch.save(state, workdir / "diffres.pt")
    code = main(["export", "--factory", "user_factory:without_compressor", "--labels",
                 "labels.txt", "--diffres-state", "diffres.pt", "--rate", "0.25", "--name", "p",
                 "--version", "1", "--store", "store", "--formats", "onnx"])
    assert code == 0, capsys.readouterr()
    directory = workdir / "store" / "p" / "1"
    c = Manifest.read(directory).compressor
    assert (c.kind, c.in_t_dim, c.in_f_dim, c.dimension_reduction_rate) == ("diffres", 101, 40,
                                                                             0.25)
    session = ort.InferenceSession(str(directory / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    _, scores, *_ = session.run(None, {"spectrogram": ref["x"]})
    np.testing.assert_allclose(scores, ref["score"][..., 0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--factory", "nowhere"], "--factory must be package.module:function"),
    (["--factory", "user_factory:missing"], "cannot load --factory user_factory:missing"),
    (["--factory", "user_factory:without_classifier"], "returned no ['compressor', 'classifier']"),
    (["--factory", "user_factory:without_compressor", "--diffres-state", "labels.txt"],
     "labels.txt"),
    (["--factory", "user_factory:build", "--formats", "tflite"], "formats must be one or more"),
    (["--factory", "user_factory:build", "--tolerance", "avgpool"], "OUTPUT=VALUE"),
])
def test_mistakes_end_in_one_line_and_status_2(workdir, capsys, args, message):
    code = main(["export", "--labels", "labels.txt", "--name", "m", "--version", "1",
                 "--store", "store", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (workdir / "store" / "m").exists()
