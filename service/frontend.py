"""Log-mel front end: waveform [B, N] -> natural-log mel power [B, T, n_mels].

The STFT is a strided ``conv1d`` with fixed windowed-DFT kernels, and the mel matrix a
registered buffer, so the same module trains, scripts to TorchScript and exports to ONNX
(any batch size, any number of samples) without ``torch.stft`` or complex tensors.

Definition (what the serving side and the tests reproduce):

* frames are centred: the signal is zero-padded (constant, not reflect, so even a
  1-sample input works) by ``n_fft // 2`` on the left and ``n_fft - n_fft // 2`` on the
  right, giving ``T = 1 + N // hop_length`` frames (for even ``n_fft`` this is exactly
  ``torch.stft(center=True, pad_mode="constant")``);
* the window is a periodic Hann of ``win_length``, zero-padded to ``n_fft`` in the middle;
* power spectrum ``|X_k|^2`` for ``k = 0 .. n_fft // 2``;
* plain triangular mel filters (torchaudio's ``norm=None``: peak 1, no area
  normalisation, so a filter's gain does not depend on its width) on the HTK or Slaney mel
  scale, between ``f_min`` and ``f_max``, FFT bin k at ``k * sample_rate / n_fft`` Hz;
* output ``log(clamp(mel, min=log_floor))``; digital silence is exactly ``log(log_floor)``.
"""

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from service import mel
from service.manifest import FrontendSpec
from service.mel import MEL_SCALES


def num_frames(n_samples: int, hop_length: int) -> int:
    """Frames the centred front end makes of ``n_samples``: 1 + n_samples // hop_length."""
    return 1 + n_samples // hop_length


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   mel_scale: str = "htk", n_fft: int | None = None,
                   norm: str | None = None) -> Tensor:
    """:func:`service.mel.mel_filterbank` as a tensor."""
    return torch.from_numpy(mel.mel_filterbank(n_freqs, f_min, f_max, n_mels, sample_rate,
                                               mel_scale, n_fft, norm))


def hann_window(win_length: int, n_fft: int) -> Tensor:
    """:func:`service.mel.hann_window` as a float64 tensor."""
    return torch.from_numpy(mel.hann_window(win_length, n_fft))


def dft_kernels(n_fft: int, window: Tensor) -> Tensor:
    """[2 * (n_fft // 2 + 1), 1, n_fft] conv1d weights: windowed cos rows, then -sin rows."""
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(n_fft, dtype=torch.float64).unsqueeze(0)
    # (k * n) mod n_fft keeps the phase argument small, so float64 stays exact for big n_fft.
    phase = 2.0 * math.pi * torch.remainder(k * n, n_fft) / n_fft
    kernels = torch.cat([torch.cos(phase), -torch.sin(phase)], dim=0) * window.to(torch.float64)
    return kernels.to(torch.float32).unsqueeze(1)


def log_mel(waveform: Tensor, kernels: Tensor, filterbank: Tensor, hop_length: int,
            log_floor: float) -> Tensor:
    """[B, N] waveform -> [B, 1 + N // hop_length, n_mels] log mel power.

    ``kernels`` from :func:`dft_kernels`, ``filterbank`` from :func:`mel_filterbank`.
    """
    n_fft = kernels.shape[-1]
    n_freqs = filterbank.shape[0]
    padded = nn.functional.pad(waveform.unsqueeze(1), (n_fft // 2, n_fft - n_fft // 2))
    spec = nn.functional.conv1d(padded, kernels, stride=hop_length)  # [B, 2 * n_freqs, T]
    power = spec[:, :n_freqs].pow(2) + spec[:, n_freqs:].pow(2)
    mel = torch.matmul(power.transpose(1, 2), filterbank)  # [B, T, n_mels]
    return torch.log(torch.clamp(mel, min=log_floor))


class LogMel(nn.Module):
    """Natural-log mel power of a mono waveform; see the module docstring for the definition.

    forward(waveform [B, N] float32) -> [B, 1 + N // hop_length, n_mels].
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, win_length: int = 400,
                 hop_length: int = 160, n_mels: int = 40, f_min: float = 20.0,
                 f_max: float = 8000.0, mel_scale: str = "htk", log_floor: float = 1e-6) -> None:
        super().__init__()
        _check_arguments(sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max,
                         mel_scale, log_floor)
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.mel_scale = mel_scale
        self.log_floor = float(log_floor)
        fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, mel_scale, n_fft)
        if bool((fb.max(dim=0).values == 0).any()):
            # Same condition torchaudio warns about: some bands fall between FFT bins and
            # will output log(log_floor) for every input.
            warnings.warn(f"{n_mels} mel bands over {n_fft // 2 + 1} FFT bins leave some "
                          "filters empty; use fewer mels or a larger n_fft", stacklevel=2)
        self.register_buffer("kernels", dft_kernels(n_fft, hann_window(win_length, n_fft)),
                             persistent=False)
        self.register_buffer("filterbank", fb, persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        return log_mel(waveform, self.kernels, self.filterbank, self.hop_length, self.log_floor)

    @classmethod
    def from_spec(cls, spec: FrontendSpec) -> "LogMel":
        return cls(**spec.model_dump())

    @torch.jit.unused
    def spec(self) -> FrontendSpec:
        return FrontendSpec(sample_rate=self.sample_rate, n_fft=self.n_fft,
                            win_length=self.win_length, hop_length=self.hop_length,
                            n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max,
                            mel_scale=self.mel_scale, log_floor=self.log_floor)

    @torch.jit.unused
    def describe(self) -> dict:
        """Plain, JSON-ready description: ``{"type": "LogMel", **FrontendSpec fields}``;
        :meth:`from_description` rebuilds the module from it."""
        return {"type": "LogMel", **self.spec().model_dump()}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> "LogMel":
        """Inverse of :meth:`describe`."""
        fields = dict(description)
        if fields.pop("type", None) != "LogMel":
            raise ValueError(f"not a LogMel description: type={description.get('type')!r}")
        unknown = sorted(set(fields) - set(FrontendSpec.model_fields))
        if unknown:
            raise ValueError(f"unknown LogMel parameters {unknown}")
        return cls.from_spec(FrontendSpec(**fields))

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
                f"win_length={self.win_length}, hop_length={self.hop_length}, "
                f"n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}, "
                f"mel_scale={self.mel_scale!r}, log_floor={self.log_floor}")


def _check_arguments(sample_rate: int, n_fft: int, win_length: int, hop_length: int,
                     n_mels: int, f_min: float, f_max: float, mel_scale: str,
                     log_floor: float) -> None:
    for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft),
                        ("win_length", win_length), ("hop_length", hop_length),
                        ("n_mels", n_mels)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if win_length > n_fft:
        raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
    if not 0.0 <= f_min < f_max:
        raise ValueError(f"need 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
    if f_max > sample_rate / 2:
        raise ValueError(f"f_max ({f_max}) is above the Nyquist frequency ({sample_rate / 2})")
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
    if not (log_floor > 0.0 and math.isfinite(log_floor)):
        raise ValueError(f"log_floor must be a positive finite number, got {log_floor!r}")
