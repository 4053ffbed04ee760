"""The front end of a ``LogMel`` model computed in numpy (``service.mel``) instead of through
its exported file: an FFT where the file runs a 400-tap DFT as a convolution, 1.3x less CPU
for a 1 s clip and 1.8x for 10 s (``benchmarks/frontend_cost.py``), on what is the largest
single cost of an audio request on a CPU host.

It is used only where it gives the file's numbers: ``largest_difference`` runs both on the
shipped check clip (voices, a chord, noise, clicks, digital silence) and on noise at several
levels, and the repository keeps the file when the two differ by more than ``tolerance``
(``Settings.native_frontend`` turns it off altogether). Any other front-end type, or a
LogMel whose manifest does not give its settings, runs its file, as exported.
"""

import numpy as np

from service import mel
from service.export import check_audio
from service.manifest import FRONTEND_TOLERANCE, FrontendInfo, FrontendSpec, Manifest
from service.serving.runtime.backend import Backend

NATIVE_TYPES = frozenset({"LogMel"})


class NativeLogMel:
    name = "native"

    def __init__(self, spec: FrontendSpec, output_name: str) -> None:
        self.spec, self.output_name = spec, output_name
        # float32 once here, not on every call (log_mel computes in float32).
        self.window = mel.hann_window(spec.win_length, spec.n_fft).astype(np.float32)
        self.filterbank = mel.mel_filterbank(spec.n_fft // 2 + 1, spec.f_min, spec.f_max,
                                             spec.n_mels, spec.sample_rate, spec.mel_scale,
                                             spec.n_fft)
        self.device = "cpu"

    def load(self, device: str) -> None:
        """Nothing to load: numpy on the CPU whatever ``device`` the model runs on."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {self.output_name: mel.log_mel(batch, self.window, self.filterbank,
                                              self.spec.hop_length, self.spec.log_floor)}

    def close(self) -> None: ...


def native_frontend(info: FrontendInfo, output_name: str) -> NativeLogMel | None:
    """The native front end for ``info``, or None when its type has none or its manifest
    does not give its settings."""
    if info.type not in NATIVE_TYPES or not info.params:
        return None
    return NativeLogMel(FrontendSpec(**info.params), output_name)


def tolerance(manifest: Manifest) -> float:
    """Largest difference from the file allowed: the one its export check recorded, else
    the export check's default."""
    recorded = [o.tolerance for o in manifest.frontend_outputs if o.tolerance is not None]
    return recorded[0] if recorded else FRONTEND_TOLERANCE


def check_inputs(sample_rate: int) -> list[np.ndarray]:
    """[B, N] batches to compare front ends on: the real check clip, and seeded noise from
    -60 to 0 dBFS with a stretch of digital silence."""
    clip = check_audio.load(sample_rate)[np.newaxis]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, sample_rate)) * np.array([[1.0], [0.03], [0.001]])
    noise[:, sample_rate // 3:sample_rate // 2] = 0.0
    return [clip.astype(np.float32), noise.astype(np.float32)]


def largest_difference(native: Backend, exported: Backend, sample_rate: int) -> float:
    """Largest |native - exported| over ``check_inputs`` (inf on a shape mismatch)."""
    worst = 0.0
    for batch in check_inputs(sample_rate):
        a = next(iter(native.run(batch).values()))
        b = next(iter(exported.run(batch).values()))
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst
