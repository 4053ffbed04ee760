"""Small modules a user might bring: their own classifier, compressor and front ends."""

import torch
from torch import Tensor, nn

from service.diffres import DiffRes
from service.frontend import LogMel, log_mel

T, F, RATE = 51, 40, 0.5
LABELS = ["cat", "dog", "owl"]


class TinyCNN(nn.Module):
    """A classifier of the user's own: no n_classes attribute, any feature layout."""

    def __init__(self, channels: int, n_classes: int = len(LABELS)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.head = nn.Linear(8, n_classes)

    def forward(self, feature: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(feature)).mean(dim=(2, 3)) * 10.0)


class StarArgsCNN(TinyCNN):
    """Exports to ONNX but does not script: ``*args`` in forward."""

    def forward(self, *args: Tensor) -> Tensor:  # type: ignore[override]
        return self.head(torch.relu(self.conv(args[0])).mean(dim=(2, 3)))


class NormalisedLogMel(LogMel):
    """LogMel with per-clip mean removal: its output is not LogMel's."""

    def forward(self, waveform: Tensor) -> Tensor:
        x = log_mel(waveform, self.kernels, self.filterbank, self.hop_length, self.log_floor)
        return (x - x.mean(dim=(1, 2), keepdim=True)) / 4.0


def diffres_modules(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return DiffRes(T, F, RATE), TinyCNN(3)
