"""A compact CNN classifier over compressed spectrogram features [B, C, t, F].

Small on purpose: DiffRes's claim is about how much of the time axis the classifier needs,
so the classifier's cost should scale with t and stay cheap enough to train on CPU
(about 8 MFLOPs at C=3, t=101, F=40 with the default width).
"""

import torch
from torch import Tensor, nn


class ConvBlock(nn.Module):
    """Conv2d 3x3 -> BatchNorm -> ReLU, then an optional 2x2 max pool.

    The pool uses ``ceil_mode`` so a dimension of size 1 stays 1 instead of vanishing:
    the classifier then accepts any t >= 1 and F >= 1. [B, Cin, t, F] -> [B, Cout, t', F'].
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


def channel_widths(width: int) -> list[int]:
    """Output channels of the four blocks: narrow while the maps are large, ``width`` at the end."""
    return [max(width // 4, 1), max(width // 2, 1), width, width]


def check_sizes(dropout: float, **sizes: int) -> None:
    """A classifier's constructor arguments: every size positive, dropout in [0, 1)."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class Classifier(nn.Module):
    """forward(feature [B, C, t, F]) -> logits [B, n_classes], for any t >= 1.

    Input BatchNorm (DiffRes stacks log power with a [-1, 1] position encoding, whose scales
    differ), four conv blocks pooling 2x2 after the first three, mean over frequency, then
    mean and max over time side by side, dropout, linear. The max keeps a short keyword from
    being averaged away by the silence around it (on our keyword set it lifts validation
    accuracy by ~10 points over a plain global average at the same cost).

    Args:
        in_channels: C, 3 for DiffRes' (avgpool, maxpool, resolution_enc), 1 otherwise.
        n_classes: number of output logits.
        in_f_dim: F; fixed so the model is checked against its compressor (the network
            itself is global-pooled and would run at any F).
        width: channels of the last blocks.
        dropout: before the linear layer.
    """

    def __init__(self, in_channels: int, n_classes: int, in_f_dim: int, width: int = 32,
                 dropout: float = 0.1) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, n_classes=n_classes, in_f_dim=in_f_dim,
                    width=width, dropout=dropout)
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.in_f_dim = int(in_f_dim)
        widths = channel_widths(width)
        self.input_norm = nn.BatchNorm2d(in_channels)
        self.blocks = nn.Sequential(*[
            ConvBlock(cin, cout, pool=i < len(widths) - 1)
            for i, (cin, cout) in enumerate(zip([in_channels] + widths[:-1], widths))
        ])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * widths[-1], n_classes)

    def forward(self, feature: Tensor) -> Tensor:
        if feature.dim() != 4 or feature.shape[1] != self.in_channels \
                or feature.shape[3] != self.in_f_dim:
            raise ValueError(f"expected feature [B, {self.in_channels}, t, {self.in_f_dim}], "
                             f"got {list(feature.shape)}")
        h = self.blocks(self.input_norm(feature)).mean(dim=3)  # [B, width, t']
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return self.head(self.dropout(pooled))


def classifier_mflops(model: nn.Module, c: int, t: int, f: int) -> float:
    """Millions of FLOPs of one forward on a [1, c, t, f] input, counting conv and linear
    layers only, one multiply-add as 2 FLOPs (BatchNorm, ReLU and pooling are ignored).

    Shapes come from forward hooks on a dummy input, so it follows any architecture built
    from ``nn`` layers: a conv counts Cin / groups x kernel area multiply-adds per output
    element, so strided, dilated and depthwise convs (BC-ResNet's) and convs on a pooled
    [C, 1, t] map count what they compute; a layer called twice counts twice. Functional
    convs (``torch.nn.functional.conv2d``) are not seen.
    """
    macs = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d | nn.Conv1d):
            per_output = module.weight[0].numel()  # Cin / groups * kernel area
            macs += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            model(torch.zeros(1, c, t, f, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 2.0 * macs / 1e6
