"""The mel maths in numpy, defined once: the mel scales, the triangular filterbank, the Hann
window, and the log-mel of ``service.frontend.LogMel`` computed with an FFT.

``service.frontend`` builds its torch buffers from these functions (so training, the exported
files and the server share one definition), and the server computes the log-mel of a LogMel
model here instead of through its exported DFT convolution (``serving/runtime/
native_frontend.py``): the same numbers for less CPU, and no torch.
"""

import numpy as np

MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")
FRAME_BLOCK = 32  # frames per FFT call in log_mel (benchmarks/frontend_cost.py)

# Slaney's Auditory Toolbox mel scale: linear to 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(freq: np.ndarray, mel_scale: str = "htk") -> np.ndarray:
    """Hertz -> mels on the HTK (2595 log10(1 + f/700)) or Slaney scale, float64."""
    freq = np.asarray(freq, np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    log_part = _SLANEY_MIN_LOG_MEL + np.log(
        np.maximum(freq, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return np.where(freq >= _SLANEY_MIN_LOG_HZ, log_part, freq / _SLANEY_F_SP)


def mel_to_hz(mels: np.ndarray, mel_scale: str = "htk") -> np.ndarray:
    """Inverse of :func:`hz_to_mel`, float64."""
    mels = np.asarray(mels, np.float64)
    if mel_scale == "htk":
        return 700.0 * (np.power(10.0, mels / 2595.0) - 1.0)
    log_part = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
    return np.where(mels >= _SLANEY_MIN_LOG_MEL, log_part, mels * _SLANEY_F_SP)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   mel_scale: str = "htk", n_fft: int | None = None,
                   norm: str | None = None) -> np.ndarray:
    """[n_freqs, n_mels] triangular filters, float32.

    Bin k sits at k * sample_rate / n_fft Hz, ``n_fft`` defaulting to 2 * (n_freqs - 1)
    (pass it for an odd n_fft, whose last bin is below Nyquist). Filter m rises from mel
    point m to m + 1 and falls to m + 2, the n_mels + 2 points f_pts equally spaced in
    mels. ``norm=None``: peak 1; ``norm="slaney"``: filter m scaled by
    2 / (f_pts[m + 2] - f_pts[m]) (area normalisation, torchaudio's and librosa's
    "slaney"). Built in float64 and rounded once.
    """
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
    if norm not in MEL_NORMS:
        raise ValueError(f"norm must be one of {MEL_NORMS}, got {norm!r}")
    n_fft = 2 * (n_freqs - 1) if n_fft is None else n_fft
    all_freqs = np.arange(n_freqs, dtype=np.float64) * (sample_rate / n_fft)
    m_min, m_max = hz_to_mel(float(f_min), mel_scale), hz_to_mel(float(f_max), mel_scale)
    f_pts = mel_to_hz(np.linspace(m_min, m_max, n_mels + 2), mel_scale)
    f_diff = f_pts[1:] - f_pts[:-1]  # [n_mels + 1]
    slopes = f_pts[np.newaxis, :] - all_freqs[:, np.newaxis]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(np.minimum(down, up), 0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2]))[np.newaxis, :]
    return fb.astype(np.float32)


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann of ``win_length`` centred in ``n_fft`` zeros (as ``torch.stft``),
    float64."""
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left))


def log_mel(waves: np.ndarray, window: np.ndarray, filterbank: np.ndarray, hop_length: int,
            log_floor: float) -> np.ndarray:
    """[B, N] float32 -> [B, 1 + N // hop_length, n_mels] float32: ``LogMel``'s definition
    (centred frames, zero padding, power spectrum, filterbank, log of the clamped power),
    with an FFT instead of a DFT convolution. Their difference is rounding: ~1e-6 here, up to
    ~1e-3 in bins 80 dB below their frame's peak.

    Frames go through in blocks of ``FRAME_BLOCK``: whole-clip temporaries (a 10 s clip's
    frames are 3 MB) are fresh pages on every call and tripled the time of a long clip."""
    n_fft = len(window)
    window = np.asarray(window, np.float32)  # a no-op for a float32 window
    padded = np.pad(np.asarray(waves, np.float32), ((0, 0), (n_fft // 2, n_fft - n_fft // 2)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop_length]
    out = np.empty(frames.shape[:2] + (filterbank.shape[1],), np.float32)
    for start in range(0, frames.shape[1], FRAME_BLOCK):
        block = slice(start, start + FRAME_BLOCK)
        spectrum = np.fft.rfft(frames[:, block] * window, axis=2)  # [B, block, n_fft // 2 + 1]
        power = spectrum.real ** 2 + spectrum.imag ** 2
        np.matmul(power, filterbank, out=out[:, block])
    return np.log(np.maximum(out, np.float32(log_floor), out=out), out=out)
