"""LogMel against an independent float64 numpy log-mel, and its exported forms against eager."""

import math
import warnings

import numpy as np
import pytest
import torch

from service import mel
from service.frontend import LogMel, mel_filterbank, num_frames
from service.manifest import FrontendSpec
from tests.frontend_export import assert_exports_match, export_front_end

# Each config with the waveform lengths to test; 1 sample must work everywhere.
CONFIGS = [
    (dict(), [1, 160, 1601, 16000]),
    (dict(hop_length=16, mel_scale="slaney"), [1, 17, 4001]),  # 1 ms hop
    (dict(n_fft=1024, win_length=1024, n_mels=128), [1, 3333]),
    (dict(n_fft=1024, win_length=800, n_mels=128, mel_scale="slaney", f_min=0.0), [1, 2049]),
    (dict(sample_rate=22050, n_fft=401, win_length=301, hop_length=99, n_mels=64,
          f_max=11025.0), [1, 99, 5000]),  # odd n_fft and window
]


# ---- the reference, written from the definition with numpy only --------------------------

def np_hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0,
                    15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0))


def np_mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def np_mel_matrix(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                  scale: str) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels]: triangle m over mel points m, m + 1, m + 2, peak 1."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    pts = np_mel_to_hz(np.linspace(np_hz_to_mel(f_min, scale), np_hz_to_mel(f_max, scale),
                                   n_mels + 2), scale)
    fb = np.zeros((freqs.size, n_mels))
    for m in range(n_mels):
        lo, mid, hi = pts[m], pts[m + 1], pts[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    return fb


def np_log_mel(wave: np.ndarray, sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
               n_mels=40, f_min=20.0, f_max=8000.0, mel_scale="htk", log_floor=1e-6):
    """[B, N] -> [B, T, n_mels] in float64, framing and FFT done explicitly."""
    wave = np.asarray(wave, dtype=np.float64)
    n = wave.shape[1]
    padded = np.pad(wave, ((0, 0), (n_fft // 2, n_fft - n_fft // 2)))
    t = 1 + n // hop_length
    frames = np.stack([padded[:, i * hop_length: i * hop_length + n_fft] for i in range(t)],
                      axis=1)  # [B, T, n_fft]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left:left + win_length] = hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ np_mel_matrix(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale)
    return np.log(np.maximum(mel, log_floor))


def noise(batch: int, n: int, seed: int) -> torch.Tensor:
    """Noise at a few levels, with a run of digital silence in the first item."""
    g = torch.Generator().manual_seed(seed)
    gain = torch.tensor([0.5, 0.05, 0.005])[torch.arange(batch) % 3].unsqueeze(1)
    wave = torch.randn(batch, n, generator=g) * gain
    wave[0, n // 3: n // 3 + n // 2] = 0.0
    return wave


# ---- tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("config,lengths", CONFIGS)
def test_matches_numpy_reference(config, lengths):
    module = LogMel(**config)
    for i, n in enumerate(lengths):
        wave = noise(3, n, seed=i)
        out = module(wave)
        expected = np_log_mel(wave.numpy(), **config)
        assert out.shape == (3, num_frames(n, module.hop_length), module.n_mels)
        assert out.dtype == torch.float32
        # float32 DFT against float64: the error grows for bands far below their frame's peak
        # and with the convolution kernel's summation order (max 6e-6 with oneDNN's AVX-512
        # and AVX2 kernels, 1.5e-5 with its SSE4.1 ones); a wrong window, padding or scale
        # is off by far more than 1e-4.
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("config,lengths", CONFIGS)
def test_numpy_log_mel_matches_the_reference(config, lengths):
    """service.mel.log_mel, what the server computes for a LogMel model (float64 FFT)."""
    spec = FrontendSpec(**config)
    window = mel.hann_window(spec.win_length, spec.n_fft)
    fb = mel.mel_filterbank(spec.n_fft // 2 + 1, spec.f_min, spec.f_max, spec.n_mels,
                            spec.sample_rate, spec.mel_scale, spec.n_fft)
    for i, n in enumerate(lengths):
        wave = noise(3, n, seed=i).numpy()
        out = mel.log_mel(wave, window, fb, spec.hop_length, spec.log_floor)
        assert out.shape == (3, num_frames(n, spec.hop_length), spec.n_mels)
        assert out.dtype == np.float32
        # Only the float32 power and filterbank product differ from the float64 reference.
        np.testing.assert_allclose(out, np_log_mel(wave, **config), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_filterbank_matches_numpy(scale):
    fb = mel_filterbank(513, 0.0, 8000.0, 128, 16000, scale)
    np.testing.assert_allclose(fb.numpy(), np_mel_matrix(16000, 1024, 128, 0.0, 8000.0, scale),
                               atol=1e-6)


def test_silence_is_log_floor_and_frames_count():
    module = LogMel(log_floor=1e-5)
    out = module(torch.zeros(2, 1234))
    assert out.shape == (2, 1 + 1234 // 160, 40)
    # Silence is one value in every frame and band: torch's float32 log of the floor. Its
    # log need not round ln(1e-5) correctly (the exact value is 0.14 ulp from a rounding
    # midpoint), so that value is compared with math.log to within an ulp, not for equality.
    silence = out.flatten()[0].item()
    assert torch.all(out == silence)
    assert silence == pytest.approx(math.log(1e-5), rel=1e-7, abs=0)  # 1 ulp: 8e-8 relative
    assert [num_frames(n, 160) for n in (0, 1, 159, 160, 161)] == [1, 1, 1, 2, 2]


def test_spec_round_trip():
    spec = FrontendSpec(hop_length=16, n_mels=64, mel_scale="slaney", log_floor=1e-8)
    module = LogMel.from_spec(spec)
    assert module.spec() == spec
    assert module.hop_length == 16 and module.n_mels == 64
    assert "kernels" not in module.state_dict()  # derived constants are not checkpointed


def test_empty_filters_warn():
    with pytest.warns(UserWarning, match="filters empty"):
        LogMel(n_mels=128)  # 128 bands over 201 bins: the lowest are narrower than a bin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LogMel()


@pytest.mark.parametrize("bad", [
    dict(sample_rate=0), dict(n_fft=0), dict(win_length=401), dict(win_length=0),
    dict(hop_length=0), dict(hop_length=1.5), dict(n_mels=0), dict(f_min=-1.0),
    dict(f_min=9000.0), dict(f_max=8001.0), dict(mel_scale="bark"), dict(log_floor=0.0),
    dict(log_floor=float("nan")),
])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        LogMel(**bad)


@pytest.fixture(scope="module", params=[dict(), dict(hop_length=16, n_mels=128, n_fft=1024,
                                                     win_length=1024, mel_scale="slaney")],
                ids=["default", "hop16-slaney-128"])
def exported(request, tmp_path_factory):
    module = LogMel(**request.param).eval()
    _, scripted, session = export_front_end(module, noise(2, 4000, seed=0),
                                            tmp_path_factory.mktemp("frontend"))
    return module, scripted, session


@pytest.mark.parametrize("batch,n", [(1, 1), (1, 16001), (3, 4321), (3, 160)])
def test_torchscript_and_onnx_match_eager(exported, batch, n):
    module, scripted, session = exported
    assert_exports_match(module, scripted, session, noise(batch, n, seed=batch + n), 1e-4)


def test_batch_items_are_independent():
    """One item alone or in a batch: the same up to the rounding of whichever convolution and
    matmul kernels the batch size selects (2e-6 here, but each result may be up to 1.5e-5
    from the exact one, see test_matches_numpy_reference, so two kernels may differ by twice
    that). The items are 20 dB apart: a leak between them would be far above 1e-4."""
    module = LogMel()
    wave = noise(3, 3000, seed=5)
    whole = module(wave)
    for i in range(3):
        torch.testing.assert_close(module(wave[i:i + 1]), whole[i:i + 1], rtol=0, atol=1e-4)
