"""A user's own front end, compressor and classifier export as they are: the served front end
is theirs (never a rebuilt LogMel), an unscriptable classifier exports to ONNX alone, and
every output, the compressed maps included, is checked against its tolerance."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.diffres import DiffRes
from service.errors import ExportCheckError
from service.export import export_model_dir
from service.export.check_audio import load as load_check_audio
from service.export.formats import RUNNERS
from service.frontend import LogMel
from service.frontends import MelSpectrogram
from service.manifest import COMPRESSION_OUTPUTS, Manifest
from tests.export.conftest import (
    LABELS,
    F,
    NormalisedLogMel,
    StarArgsCNN,
    TinyCNN,
    diffres_modules,
)


def _frontend_onnx(directory, wave: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(directory / "frontend.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"waveform": wave[None].astype(np.float32)})[0]


def test_a_log_mel_subclass_is_served_as_it_is(tmp_path):
    frontend = NormalisedLogMel(n_mels=F)
    compressor, classifier = diffres_modules()
    out = tmp_path / "m" / "1"
    manifest = export_model_dir(compressor, classifier, frontend, out, "m", 1, LABELS)
    wave = load_check_audio(16000)
    with torch.no_grad():
        theirs = frontend(torch.from_numpy(wave)[None]).numpy()
        plain = LogMel(n_mels=F)(torch.from_numpy(wave)[None]).numpy()
    served = _frontend_onnx(out, wave)
    assert np.abs(served - theirs).max() <= manifest.frontend_outputs[0].tolerance
    assert np.abs(plain - theirs).max() > 1.0  # a rebuilt LogMel would be far off
    assert manifest.frontend.type == "NormalisedLogMel"
    assert manifest.frontend.value_range != (-1000.0, 50.0)  # measured, not LogMel's


def test_a_torchaudio_convention_front_end_in_db(tmp_path):
    frontend = MelSpectrogram(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=F,
                              f_min=20.0, mel_scale="slaney", norm="slaney", scale="db",
                              top_db=80.0)
    torch.manual_seed(0)
    compressor, classifier = DiffRes(101, F, 0.6), TinyCNN(3)
    out = tmp_path / "m" / "1"
    manifest = export_model_dir(compressor, classifier, frontend, out, "m", 1, LABELS)
    info = manifest.frontend
    assert (info.type, info.sample_rate, info.hop_length, info.n_mels) == (
        "MelSpectrogram", 32000, 320, F)
    # 10 log10(amin) for digital silence, to within float32 log10 rounding
    assert info.silence == pytest.approx([-100.0] * F, rel=0, abs=1e-4)
    assert info.params["scale"] == "db" and info.params["top_db"] == 80.0
    wave = load_check_audio(32000)
    with torch.no_grad():
        theirs = frontend(torch.from_numpy(wave)[None]).numpy()
    served = _frontend_onnx(out, wave)
    assert np.abs(served - theirs).max() <= manifest.frontend_outputs[0].tolerance
    assert Manifest.read(out) == manifest


def test_an_unscriptable_classifier_exports_to_onnx_only(tmp_path):
    compressor, _ = diffres_modules()
    out = tmp_path / "m" / "1"
    manifest = export_model_dir(compressor, StarArgsCNN(3), LogMel(n_mels=F), out, "m", 1,
                                LABELS, formats=["onnx"])
    assert sorted(p.name for p in out.iterdir()) == ["frontend.onnx", "manifest.json",
                                                     "model.onnx"]
    assert manifest.backends == ["onnx"]
    assert set(manifest.artifacts) == {"frontend.onnx", "model.onnx"}


def test_compressed_maps_are_checked_against_their_tolerance(tmp_path, monkeypatch):
    real_runner = RUNNERS["onnx"]

    def maxpool_off(path):
        run = real_runner(path)
        return lambda x: tuple(o + 0.05 * (i == 3) for i, o in enumerate(run(x)))

    monkeypatch.setitem(RUNNERS, "onnx", maxpool_off)
    compressor, classifier = diffres_modules()
    with pytest.raises(ExportCheckError, match=r"output 'maxpool' differs .* by 0.05"):
        export_model_dir(compressor, classifier, LogMel(n_mels=F), tmp_path / "m" / "1", "m", 1,
                         LABELS, formats=["onnx"])


def test_every_output_carries_its_tolerance(tmp_path):
    compressor, classifier = diffres_modules()
    manifest = export_model_dir(compressor, classifier, LogMel(n_mels=F), tmp_path / "m" / "1",
                                "m", 1, LABELS, formats=["onnx"], tolerances={"avgpool": 0.02})
    tolerances = {o.name: o.tolerance for o in manifest.outputs}
    assert set(COMPRESSION_OUTPUTS) <= set(tolerances)
    assert tolerances["avgpool"] == 0.02 and tolerances["probabilities"] == 1e-4
    check = manifest.metrics["export_check"]["model"]["onnx"]
    assert all(check[name] <= tolerances[name] for name in tolerances)
