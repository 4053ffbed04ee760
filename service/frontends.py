"""Front ends beyond :class:`~service.frontend.LogMel`, and rebuilding any front end from
its plain-data description.

:class:`MelSpectrogram` reproduces ``torchaudio.transforms.MelSpectrogram`` followed by a
natural log or ``torchaudio.transforms.AmplitudeToDB``, and optionally per-band
normalisation, without torchaudio: a model trained on such features can be served. Like
LogMel it is a strided ``conv1d`` DFT plus a mel matrix, so it scripts to TorchScript and
exports to ONNX opset 18 with dynamic batch and sample axes.

Definition, waveform ``[B, N]`` -> features ``[B, T, n_mels]``:

* frames are centred with REFLECT padding of ``n_fft // 2`` samples on both sides
  (``torch.stft(center=True, pad_mode="reflect")``), ``T = 1 + N // hop_length``;
* the window is a periodic Hann of ``win_length`` centred in ``n_fft`` zeros;
* ``|X_k|^2`` (``power=2.0``) or ``|X_k|`` (``power=1.0``) for ``k = 0 .. n_fft // 2``;
* triangular mel filters on the ``"htk"`` or ``"slaney"`` scale between ``f_min`` and
  ``f_max``, peak 1 (``norm=None``) or area-normalised by 2 / (f_pts[m + 2] - f_pts[m])
  (``norm="slaney"``); FFT bin k sits at ``k * (sample_rate // 2) / (n_fft // 2)`` Hz and
  ``f_max`` defaults to ``float(sample_rate // 2)`` (torchaudio's integer division, which
  only matters for an odd sample rate);
* ``scale="log"``: ``log(clamp(mel, min=log_floor))``;
  ``scale="db"`` (``AmplitudeToDB``): ``m * log10(clamp(mel, min=amin))
  - m * log10(max(amin, 1.0))`` with ``m = 10`` for ``stype="power"``, 20 for
  ``"magnitude"``; with ``top_db`` set, values are clamped below ``max - top_db``;
* optionally ``(x - band_mean) / band_std`` per mel band;
* the output is ``[B, T, n_mels]`` (torchaudio's is ``[..., n_mels, T]``).

Deviations from torchaudio, on purpose:

* ``top_db`` takes the maximum PER ITEM (over that item's frames and bands, what
  torchaudio does for one unbatched ``[n_mels, T]`` spectrogram). torchaudio takes it over
  the whole ``[B, n_mels, T]`` batch, so an item's output would depend on its neighbours;
  a server batches unrelated requests and needs each output to be its own. As in
  torchaudio, the maximum is over what is fed: a long recording cut into windows gets a
  cut-off per window.
* Reflect padding needs ``N > n_fft // 2`` samples (torch and ONNX Runtime both refuse
  shorter input). Eager raises ``ValueError`` naming :attr:`min_samples` (TorchScript:
  ``torch.jit.Error`` with the same message); the ONNX graph fails in its Pad node.
  Servers feed full windows, far longer. (LogMel, zero-padded, accepts any length.)
* Only what a served feature extractor needs: ``power`` 1 or 2 (not ``None``/complex or
  other exponents), an even ``n_fft`` (an odd one makes ``torch.stft`` produce
  ``1 + (N - 1) // hop_length`` frames), Hann windows, ``pad=0``, ``normalized=False``,
  ``ref=1.0``. Filters are built in float64 and rounded once (torchaudio builds them in
  float32); outputs agree to float32 rounding.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from service.frontend import LogMel, dft_kernels, hann_window, mel_filterbank
from service.mel import MEL_NORMS, MEL_SCALES

SCALES = ("log", "db")
STYPES = ("power", "magnitude")


class MelSpectrogram(nn.Module):
    """torchaudio-convention mel spectrogram, log or dB; see the module docstring.

    Defaults are torchaudio's (``win_length = n_fft``, ``hop_length = win_length // 2``,
    ``f_max = sample_rate // 2``, 128 mels, power, HTK, no norm). ``stype`` defaults to
    ``"power"`` for ``power=2.0`` and ``"magnitude"`` for ``power=1.0``; ``stype`` and
    ``top_db`` apply only to ``scale="db"``, ``log_floor`` only to ``"log"`` and ``amin``
    only to ``"db"``. ``band_mean`` / ``band_std``: a number or ``n_mels`` numbers.

    forward(waveform [B, N] float32, N > n_fft // 2) -> [B, 1 + N // hop_length, n_mels].
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400,
                 win_length: int | None = None, hop_length: int | None = None,
                 f_min: float = 0.0, f_max: float | None = None, n_mels: int = 128,
                 power: float = 2.0, norm: str | None = None, mel_scale: str = "htk",
                 scale: str = "log", log_floor: float = 1e-6, stype: str | None = None,
                 amin: float = 1e-10, top_db: float | None = None,
                 band_mean: float | Sequence[float] | Tensor | None = None,
                 band_std: float | Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft),
                            ("n_mels", n_mels)):
            _check_positive_int(name, value)
        win_length = n_fft if win_length is None else win_length
        _check_positive_int("win_length", win_length)
        hop_length = win_length // 2 if hop_length is None else hop_length
        _check_positive_int("hop_length", hop_length)
        if n_fft % 2:
            raise ValueError(f"n_fft must be even, got {n_fft} (an odd n_fft gives "
                             "1 + (N - 1) // hop_length frames, not 1 + N // hop_length)")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        f_max = float(sample_rate // 2) if f_max is None else f_max
        if not (math.isfinite(f_min) and math.isfinite(f_max) and 0.0 <= f_min < f_max):
            raise ValueError(f"need 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
        if power not in (1.0, 2.0) or isinstance(power, bool):
            raise ValueError(f"power must be 2.0 (power) or 1.0 (magnitude), got {power!r}")
        if norm not in MEL_NORMS:
            raise ValueError(f"norm must be one of {MEL_NORMS}, got {norm!r}")
        if mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        _check_positive_float("log_floor", log_floor)
        _check_positive_float("amin", amin)
        if scale == "db":
            stype = ("power" if power == 2.0 else "magnitude") if stype is None else stype
            if stype not in STYPES:
                raise ValueError(f"stype must be one of {STYPES}, got {stype!r}")
            if top_db is not None and not (math.isfinite(top_db) and top_db >= 0.0):
                raise ValueError(f"top_db must be None or a finite number >= 0, got {top_db!r}")
        elif stype is not None or top_db is not None:
            raise ValueError("stype and top_db apply only to scale='db', "
                             f"got stype={stype!r}, top_db={top_db!r} with scale={scale!r}")

        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.n_mels = int(n_mels)
        self.power = float(power)
        self.norm = norm
        self.mel_scale = mel_scale
        self.scale = scale
        self.log_floor = float(log_floor)
        self.stype = stype
        self.amin = float(amin)
        self.top_db = None if top_db is None else float(top_db)
        # Shortest input reflect padding accepts.
        self.min_samples = self.n_fft // 2 + 1

        # Flattened for TorchScript: plain bools and floats, no Optional in forward.
        self._magnitude = self.power == 1.0
        self._db = scale == "db"
        multiplier = 20.0 if stype == "magnitude" else 10.0
        self._multiplier = multiplier
        self._floor = self.amin if self._db else self.log_floor
        self._db_offset = multiplier * math.log10(max(self.amin, 1.0))  # ref = 1.0
        self._clip = self.top_db is not None
        self._top_db = 0.0 if self.top_db is None else self.top_db
        self._normalize = band_mean is not None or band_std is not None

        # Bins at k * (sample_rate // 2) / (n_fft // 2) Hz, as torchaudio's linspace.
        fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, 2 * (sample_rate // 2),
                            mel_scale, n_fft, norm)
        if bool((fb.max(dim=0).values == 0).any()):
            warnings.warn(f"{n_mels} mel bands over {n_fft // 2 + 1} FFT bins up to "
                          f"{sample_rate // 2} Hz leave some filters empty (all zero); use "
                          "fewer mels, a larger n_fft or a lower f_max", stacklevel=2)
        self.register_buffer("kernels", dft_kernels(n_fft, hann_window(win_length, n_fft)),
                             persistent=False)
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer("band_mean", _band_vector("band_mean", band_mean, 0.0, n_mels),
                             persistent=False)
        std = _band_vector("band_std", band_std, 1.0, n_mels)
        if bool((std <= 0).any()):
            raise ValueError("band_std must be positive")
        self.register_buffer("band_std", std, persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        if not torch.jit.is_tracing():  # checked in eager and TorchScript, not traced to ONNX
            if waveform.dim() != 2:
                raise ValueError(f"expected a [batch, samples] waveform, got {waveform.dim()} "
                                 "dimensions")
            if waveform.shape[1] < self.min_samples:
                raise ValueError(f"reflect padding needs at least {self.min_samples} samples "
                                 f"(n_fft // 2 + 1), got {waveform.shape[1]}")
        half = self.n_fft // 2
        padded = nn.functional.pad(waveform.unsqueeze(1), (half, half), mode="reflect")
        spec = nn.functional.conv1d(padded, self.kernels, stride=self.hop_length)
        n_freqs = half + 1
        amplitude = spec[:, :n_freqs].pow(2) + spec[:, n_freqs:].pow(2)  # [B, n_freqs, T]
        if self._magnitude:
            amplitude = torch.sqrt(amplitude)
        mel = torch.matmul(amplitude.transpose(1, 2), self.filterbank)  # [B, T, n_mels]
        mel = torch.clamp(mel, min=self._floor)
        if self._db:
            out = self._multiplier * torch.log10(mel) - self._db_offset
            if self._clip:  # per item: the max over that item's frames and bands
                peak = torch.amax(out, dim=(1, 2), keepdim=True)
                out = torch.maximum(out, peak - self._top_db)
        else:
            out = torch.log(mel)
        if self._normalize:
            out = (out - self.band_mean) / self.band_std
        return out

    @torch.jit.unused
    def describe(self) -> dict:
        """Plain, JSON-ready description: ``"type": "MelSpectrogram"`` and every constructor
        argument (defaults resolved; band statistics as lists or None), which
        :meth:`from_description` turns back into an identical module. ``sample_rate``,
        ``hop_length`` and ``n_mels`` give the output's timing and width."""
        bands = self._normalize
        return {
            "type": "MelSpectrogram", "sample_rate": self.sample_rate, "n_fft": self.n_fft,
            "win_length": self.win_length, "hop_length": self.hop_length,
            "f_min": self.f_min, "f_max": self.f_max, "n_mels": self.n_mels,
            "power": self.power, "norm": self.norm, "mel_scale": self.mel_scale,
            "scale": self.scale, "log_floor": self.log_floor, "stype": self.stype,
            "amin": self.amin, "top_db": self.top_db,
            "band_mean": self.band_mean.tolist() if bands else None,
            "band_std": self.band_std.tolist() if bands else None,
        }

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> "MelSpectrogram":
        """Inverse of :meth:`describe`."""
        fields = dict(description)
        if fields.pop("type", None) != "MelSpectrogram":
            raise ValueError(f"not a MelSpectrogram description: "
                             f"type={description.get('type')!r}")
        unknown = sorted(set(fields) - _PARAMETERS)
        if unknown:
            raise ValueError(f"unknown MelSpectrogram parameters {unknown}")
        return cls(**fields)

    def extra_repr(self) -> str:
        d = self.describe()
        d.pop("type")
        if self._normalize:
            d["band_mean"] = d["band_std"] = f"[{self.n_mels} values]"
        return ", ".join(f"{k}={v!r}" for k, v in d.items())


_PARAMETERS = {"sample_rate", "n_fft", "win_length", "hop_length", "f_min", "f_max", "n_mels",
               "power", "norm", "mel_scale", "scale", "log_floor", "stype", "amin", "top_db",
               "band_mean", "band_std"}

FRONTENDS: dict[str, type[nn.Module]] = {"LogMel": LogMel, "MelSpectrogram": MelSpectrogram}


def frontend_from_description(description: Mapping[str, Any]) -> nn.Module:
    """Rebuild any front end from its ``describe()`` dict, dispatching on ``"type"``."""
    kind = description.get("type")
    if kind not in FRONTENDS:
        raise ValueError(f"unknown front end type {kind!r}; known: {sorted(FRONTENDS)}")
    return FRONTENDS[kind].from_description(description)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _band_vector(name: str, value: float | Sequence[float] | Tensor | None, default: float,
                 n_mels: int) -> Tensor:
    """[n_mels] float32 from None (``default``), a number or n_mels numbers."""
    if value is None:
        return torch.full((n_mels,), default)
    try:
        vector = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a number or {n_mels} numbers: {error}") from None
    if vector.numel() == 1:
        vector = vector.expand(n_mels)
    if vector.numel() != n_mels:
        raise ValueError(f"{name} must be a number or {n_mels} numbers, got {vector.numel()}")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{name} must be finite")
    return vector.to(torch.float32).clone()
