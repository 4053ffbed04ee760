"""MelSpectrogram (torchaudio conventions) against an independent float64 numpy reference,
its exported forms against eager, and front-end descriptions."""

import json
import math
import warnings

import numpy as np
import onnx
import pytest
import torch

from service.frontend import LogMel, num_frames
from service.frontends import MelSpectrogram, frontend_from_description
from tests.frontend_export import assert_exports_match, export_front_end

# Each config with the waveform lengths to test; the first is the shortest allowed.
CONFIGS = [
    (dict(n_mels=40), [201, 1601, 16000]),  # 16 kHz, n_fft 400, hop 200, natural log
    (dict(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=64, norm="slaney",
          mel_scale="slaney", scale="db", top_db=80.0), [513, 10001, 32000]),
    (dict(n_fft=512, win_length=400, hop_length=160, n_mels=64, f_min=50.0, f_max=7600.0,
          power=1.0, scale="db"), [257, 4321]),  # magnitude, 20 log10
    (dict(n_fft=512, win_length=400, hop_length=160, n_mels=40, power=1.0, norm="slaney",
          scale="log", log_floor=1e-4), [300, 5000]),  # magnitude, natural log
    (dict(sample_rate=11025, n_fft=256, hop_length=110, n_mels=32, power=1.0, stype="power",
          scale="db", top_db=60.0), [129, 3000]),  # odd rate: bins up to 11025 // 2 Hz
    (dict(n_mels=40, scale="db", top_db=80.0, band_mean=np.linspace(-60.0, -40.0, 40),
          band_std=np.linspace(10.0, 20.0, 40)), [201, 8000]),
    (dict(n_mels=40, band_mean=-5.0, band_std=4.5), [4000]),  # AST-style scalar statistics
]


# ---- the reference, written from torchaudio's documented conventions with numpy only -------

def np_hz_to_mel(f, scale):
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    return np.where(f < 1000.0, 3.0 * f / 200.0,
                    15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0))


def np_mel_to_hz(m, scale):
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def np_fbanks(sr, n_fft, n_mels, f_min, f_max, scale, norm):
    """[n_fft // 2 + 1, n_mels], bins spread evenly over 0 .. sr // 2 like torchaudio."""
    freqs = np.linspace(0.0, sr // 2, n_fft // 2 + 1)
    pts = np_mel_to_hz(np.linspace(np_hz_to_mel(f_min, scale), np_hz_to_mel(f_max, scale),
                                   n_mels + 2), scale)
    fb = np.zeros((freqs.size, n_mels))
    for m in range(n_mels):
        lo, mid, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[:, m] = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
        if norm == "slaney":
            fb[:, m] *= 2.0 / (hi - lo)
    return fb


def np_features(wave, sample_rate=16000, n_fft=400, win_length=None, hop_length=None,
                f_min=0.0, f_max=None, n_mels=128, power=2.0, norm=None, mel_scale="htk",
                scale="log", log_floor=1e-6, stype=None, amin=1e-10, top_db=None,
                band_mean=None, band_std=None):
    """[B, N] -> [B, T, n_mels] in float64: reflect-padded frames, rfft, filters, log/dB."""
    wave = np.asarray(wave, dtype=np.float64)
    win_length = win_length or n_fft
    hop_length = hop_length or win_length // 2
    f_max = float(sample_rate // 2) if f_max is None else f_max
    padded = np.pad(wave, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    t = 1 + wave.shape[1] // hop_length
    frames = np.stack([padded[:, i * hop_length: i * hop_length + n_fft] for i in range(t)],
                      axis=1)  # [B, T, n_fft]
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length)
                                                        / win_length)
    spec = np.abs(np.fft.rfft(frames * window, axis=-1)) ** power
    mel = spec @ np_fbanks(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, norm)
    if scale == "log":
        out = np.log(np.maximum(mel, log_floor))
    else:
        stype = stype or ("power" if power == 2.0 else "magnitude")
        mult = 10.0 if stype == "power" else 20.0
        out = mult * np.log10(np.maximum(mel, amin)) - mult * np.log10(max(amin, 1.0))
        if top_db is not None:  # per item
            out = np.maximum(out, out.max(axis=(1, 2), keepdims=True) - top_db)
    if band_mean is not None or band_std is not None:
        mean = 0.0 if band_mean is None else np.asarray(band_mean)
        std = 1.0 if band_std is None else np.asarray(band_std)
        out = (out - mean) / std
    return out


def noise(batch, n, seed):
    """Noise at a few levels, a run of digital silence in the first item, a tone in the last."""
    g = torch.Generator().manual_seed(seed)
    gain = torch.tensor([0.5, 0.05, 0.005])[torch.arange(batch) % 3].unsqueeze(1)
    wave = torch.randn(batch, n, generator=g) * gain
    wave[-1] += 0.3 * torch.sin(2 * math.pi * 440.0 / 16000 * torch.arange(n))
    wave[0, n // 3: n // 3 + n // 2] = 0.0
    return wave


def build(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-filter warnings are tested on their own
        return MelSpectrogram(**config)


# ---- against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("config,lengths", CONFIGS)
def test_matches_numpy_reference(config, lengths):
    module = build(config)
    # float32 DFT: ~1e-5 relative near a frame's peak, more for bands far below it (as
    # torch.stft in float32); dB is 10 / ln 10 = 4.3 times the natural-log scale. How much
    # more depends on the convolution kernel's summation order: the worst band was 6.5e-5
    # (log) and 3.7e-4 (dB) with oneDNN's AVX-512 kernels, 1.6e-4 and 3.6e-4 with its SSE4.1
    # ones. A wrong window, padding, filter edge or scale is off by more than 1e-2.
    atol = 1e-3 if config.get("scale", "log") == "log" else 5e-3
    for i, n in enumerate(lengths):
        wave = noise(3, n, seed=i)
        out = module(wave)
        assert out.shape == (3, num_frames(n, module.hop_length), module.n_mels)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), np_features(wave.numpy(), **config), rtol=0,
                                   atol=atol)


@pytest.mark.parametrize("sr,n_fft,n_mels,scale,norm", [
    (32000, 1024, 64, "htk", None), (32000, 1024, 64, "slaney", "slaney"),
    (16000, 400, 40, "htk", "slaney"), (11025, 256, 32, "slaney", None),
])
def test_filterbank_matches_numpy(sr, n_fft, n_mels, scale, norm):
    module = MelSpectrogram(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, mel_scale=scale,
                            norm=norm)
    assert module.f_max == float(sr // 2)  # 5512.0 Hz at 11025 Hz, as torchaudio
    expected = np_fbanks(sr, n_fft, n_mels, 0.0, sr // 2, scale, norm)
    np.testing.assert_allclose(module.filterbank.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_top_db_is_per_item_and_batch_independent():
    module = MelSpectrogram(n_mels=40, scale="db", top_db=80.0)
    item = noise(1, 8000, seed=3)  # includes digital silence, clipped at its own max - 80
    alone = module(item)[0]
    assert bool((alone == alone.max() - 80.0).any())
    loud = torch.cat([item, 1000.0 * noise(1, 8000, seed=4)])  # 60 dB louder neighbour
    together = module(loud)
    # dB; alone and batched may run different kernels, each up to ~4e-4 dB from exact (see
    # test_matches_numpy_reference); a batch-wide top_db would move it by 60 dB
    torch.testing.assert_close(together[0], alone, rtol=0, atol=1e-3)
    assert float(together[1].max()) > float(alone.max()) + 50.0


def test_band_normalisation_is_applied():
    mean, std = torch.linspace(-5.0, 5.0, 40), torch.linspace(1.0, 3.0, 40)
    plain = MelSpectrogram(n_mels=40)
    normed = MelSpectrogram(n_mels=40, band_mean=mean, band_std=std)
    wave = noise(2, 4000, seed=1)
    torch.testing.assert_close(normed(wave), (plain(wave) - mean) / std, rtol=1e-6, atol=1e-6)


def test_frames_and_silence():
    module = MelSpectrogram(n_mels=40, hop_length=160, scale="db", top_db=80.0)
    out = module(torch.zeros(2, 1234))
    assert out.shape == (2, 1 + 1234 // 160, 40)
    # 10 log10(amin), then max - 80 is lower. Within 1e-4, not ==: log10 need not round
    # correctly, and float32(1e-10) is not exactly 1e-10.
    torch.testing.assert_close(out, torch.full_like(out, -100.0), rtol=0, atol=1e-4)


def test_short_input_raises():
    module = MelSpectrogram(n_fft=512, n_mels=40)
    assert module.min_samples == 257
    module(torch.randn(1, 257))
    with pytest.raises(ValueError, match="at least 257 samples"):
        module(torch.randn(1, 256))
    with pytest.raises(torch.jit.Error, match="at least 257 samples"):
        torch.jit.script(module)(torch.randn(1, 256))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        module(torch.randn(1000))


# ---- descriptions --------------------------------------------------------------------------

def test_defaults_follow_torchaudio():
    with pytest.warns(UserWarning, match="filters empty"):  # as torchaudio, 128 over 201 bins
        module = MelSpectrogram()
    d = module.describe()
    assert (d["n_fft"], d["win_length"], d["hop_length"], d["f_max"], d["n_mels"]) == \
        (400, 400, 200, 8000.0, 128)
    assert d["power"] == 2.0 and d["norm"] is None and d["mel_scale"] == "htk"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MelSpectrogram(n_mels=40)
    assert MelSpectrogram(n_mels=40, power=1.0, scale="db").describe()["stype"] == "magnitude"


@pytest.mark.parametrize("config,lengths", CONFIGS)
def test_description_round_trip(config, lengths):
    module = build(config)
    description = json.loads(json.dumps(module.describe()))  # plain JSON data
    assert description["type"] == "MelSpectrogram"
    for key in ("sample_rate", "hop_length", "n_mels"):
        assert description[key] == getattr(module, key)
    rebuilt = build({k: v for k, v in description.items() if k != "type"})
    assert rebuilt.describe() == description
    again = frontend_from_description(description)
    assert isinstance(again, MelSpectrogram) and again.describe() == description
    wave = noise(2, lengths[-1], seed=7)
    assert torch.equal(again(wave), module(wave))
    assert module.state_dict() == {}  # everything is in the description


def test_logmel_description_round_trip():
    module = LogMel(hop_length=16, n_mels=64, mel_scale="slaney", log_floor=1e-8)
    description = json.loads(json.dumps(module.describe()))
    assert description == {"type": "LogMel", **module.spec().model_dump()}
    again = frontend_from_description(description)
    assert isinstance(again, LogMel) and again.spec() == module.spec()
    assert LogMel.from_description(description).describe() == description
    torch.jit.script(module)  # describe() is jit-unused


@pytest.mark.parametrize("description", [
    {"type": "Spectrogram"}, {"n_mels": 40}, {"type": "LogMel", "power": 2.0},
    {"type": "MelSpectrogram", "n_mels": 40, "centre": True},
])
def test_bad_descriptions(description):
    with pytest.raises(ValueError):
        frontend_from_description(description)
    with pytest.raises(ValueError):
        MelSpectrogram.from_description({**description, "type": "LogMel"})


@pytest.mark.parametrize("bad", [
    dict(sample_rate=0), dict(n_fft=0), dict(n_fft=401), dict(win_length=401),
    dict(win_length=0), dict(hop_length=0), dict(hop_length=1.5), dict(n_mels=0),
    dict(n_mels=True), dict(f_min=-1.0), dict(f_min=9000.0), dict(f_min=8000.0),
    dict(f_max=float("inf")), dict(power=0.5), dict(power=None), dict(norm="area"),
    dict(mel_scale="bark"), dict(scale="linear"), dict(log_floor=0.0),
    dict(log_floor=float("nan")), dict(amin=-1.0), dict(scale="db", stype="energy"),
    dict(scale="db", top_db=-1.0), dict(scale="db", top_db=float("nan")), dict(top_db=80.0),
    dict(stype="power"), dict(band_mean=[0.0] * 39), dict(band_mean=[float("nan")] * 40),
    dict(band_std=0.0), dict(band_std=[1.0] * 39 + [-1.0]), dict(band_mean="loud"),
])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        MelSpectrogram(**{"n_mels": 40, **bad})


# ---- exported forms ------------------------------------------------------------------------

EXPORTED = {
    "db-slaney-32k": dict(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=64,
                          norm="slaney", mel_scale="slaney", scale="db", top_db=80.0,
                          band_mean=-30.0, band_std=np.linspace(10.0, 20.0, 64)),
    "magnitude-log": dict(n_fft=512, win_length=400, hop_length=160, n_mels=40, power=1.0),
}


@pytest.fixture(scope="module", params=sorted(EXPORTED))
def exported(request, tmp_path_factory):
    module = build(EXPORTED[request.param]).eval()
    path, scripted, session = export_front_end(module, noise(2, 6000, seed=0),
                                               tmp_path_factory.mktemp("frontends"))
    pads = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Pad"]
    assert [a.s for n in pads for a in n.attribute if a.name == "mode"] == [b"reflect"]
    return module, scripted, session


@pytest.mark.parametrize("batch,n", [(1, 4000), (1, 16001), (3, 4000), (3, 16001)])
def test_torchscript_and_onnx_match_eager(exported, batch, n):
    module, scripted, session = exported
    # onnxruntime's DFT kernels round apart from torch's (4e-5 here), each by up to the
    # reference test's error, which depends on the CPU's kernels
    assert_exports_match(module, scripted, session, noise(batch, n, seed=batch + n), 1e-3)


def test_onnx_batch_independent_and_refuses_short_input(exported):
    module, _, session = exported
    wave = noise(3, 5000, seed=11)
    wave[1] *= 1000.0
    (whole,) = session.run(None, {"waveform": wave.numpy()})
    (first,) = session.run(None, {"waveform": wave[:1].numpy()})
    np.testing.assert_allclose(first[0], whole[0], rtol=0, atol=1e-4)
    with pytest.raises(Exception, match="(?i)pad"):
        session.run(None, {"waveform": np.zeros((1, module.min_samples - 1), np.float32)})
