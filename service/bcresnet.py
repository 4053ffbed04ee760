"""A BC-ResNet classifier (Kim et al., "Broadcasted Residual Learning for Efficient Keyword
Spotting", 2021) over compressed spectrogram features [B, C, t, F].

Sized so that the classifier, not the DiffRes estimator, is what a window costs: at full
resolution (C=1, t=101, F=40) the default width costs 66 MFLOPs, >10x the estimator's ~5, and
it never strides or pools over time, so its cost is linear in t and every frame DiffRes
removes saves its share. Inside, the layout is [B, C, F, t] as in the paper: sub-spectral
norm then groups adjacent frequency bins with a free reshape.
"""

import torch
from torch import Tensor, nn

from service.classifier import check_sizes

# Per stage: output channels as a multiple of ``width``, blocks, frequency stride of the
# first block, temporal dilation (the paper's BC-ResNet: 8, 12, 16, 20 x tau channels). The
# stem is 3x3, not the paper's 5x5: DiffRes feeds it 3 channels, and a 5x5 stem would then
# be over a quarter of the classifier's FLOPs at t=50.
STAGE_CHANNELS = (1.0, 1.5, 2.0, 2.5)
STAGE_BLOCKS = (2, 2, 4, 4)
STAGE_FREQ_STRIDES = (1, 2, 2, 1)
STAGE_DILATIONS = (1, 2, 4, 8)
STEM_FREQ_STRIDE = 2


def strided_size(size: int, stride: int) -> int:
    """Length after a 'same'-padded odd-kernel conv of ``stride``: ceil(size / stride)."""
    return (size - 1) // stride + 1


def stage_channels(width: int) -> list[int]:
    return [max(round(width * m), 1) for m in STAGE_CHANNELS]


def sub_band_count(freq_dim: int, wanted: int) -> int:
    """The largest count <= ``wanted`` that splits ``freq_dim`` bins evenly (1: plain BN)."""
    for n in range(min(wanted, freq_dim), 0, -1):
        if freq_dim % n == 0:
            return n
    return 1


class SubSpectralNorm(nn.Module):
    """BatchNorm with separate statistics per (channel, frequency sub-band): low and high
    bands of a log-mel differ in level and spread, one statistic per channel blurs them.

    [B, C, F, t] -> same; a reshape to [B, C * S, F / S, t] (a view, no copy) then BN.
    In eval mode it is a fixed per-(channel, bin) affine map, so batch items stay independent.
    """

    def __init__(self, channels: int, sub_bands: int) -> None:
        super().__init__()
        self.sub_bands = int(sub_bands)
        self.bn = nn.BatchNorm2d(channels * self.sub_bands)

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, t = x.shape
        y = self.bn(x.reshape(b, c * self.sub_bands, f // self.sub_bands, t))
        return y.reshape(b, c, f, t)


class BroadcastedBlock(nn.Module):
    """One BC-ResNet block, [B, Cin, F, t] -> [B, Cout, F', t] (F' = F / freq_stride).

    f2: a depthwise 3x1 conv over frequency (after a 1x1 conv + BN + ReLU when the channels
    change) and sub-spectral norm. f1: the f2 map averaged over frequency, a depthwise 1x3
    dilated conv over time, BN, SiLU, a 1x1 conv and channel dropout, broadcast back over
    frequency. Temporal context thus costs one [C, t] row instead of the whole [C, F, t] map.
    out = ReLU(f2 + f1 (+ the input when the shapes match)).
    """

    def __init__(self, in_channels: int, out_channels: int, freq_dim: int, freq_stride: int,
                 dilation: int, sub_bands: int, dropout: float) -> None:
        super().__init__()
        self.residual = in_channels == out_channels and freq_stride == 1
        self.expand = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU())
        self.freq_conv = nn.Conv2d(out_channels, out_channels, (3, 1), stride=(freq_stride, 1),
                                   padding=(1, 0), groups=out_channels, bias=False)
        out_f = strided_size(freq_dim, freq_stride)
        self.norm = SubSpectralNorm(out_channels, sub_band_count(out_f, sub_bands))
        self.temporal = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, dilation),
                      dilation=(1, dilation), groups=out_channels, bias=False),
            nn.BatchNorm2d(out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.Dropout2d(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x2 = self.norm(self.freq_conv(self.expand(x)))
        x1 = self.temporal(x2.mean(dim=2, keepdim=True))  # [B, C, 1, t], broadcast over F
        out = x2 + x1
        if self.residual:
            out = out + x
        return torch.relu(out)


class BCResNet(nn.Module):
    """forward(feature [B, C, t, F]) -> logits [B, n_classes], for any t >= 1.

    Input BatchNorm (DiffRes stacks log power with a [-1, 1] position encoding), a 3x3 stem
    conv to 2 x ``width`` channels striding 2 over frequency, four stages of broadcasted
    residual blocks (2, 2, 4, 4 blocks; ``width`` x 1, 1.5, 2, 2.5 channels; F 20, 10, 5, 5
    at F=40; temporal dilation 1, 2, 4, 8), a depthwise conv over the remaining frequency
    bins and a 1x1 conv to 4 x ``width`` channels, then mean and max over time side by side
    (as :class:`Classifier`: a short keyword is not averaged away by the silence around it),
    dropout, linear.
    Time is never strided, so t = 1 works and the cost is linear in t.

    Args:
        in_channels: C, 3 for DiffRes' (avgpool, maxpool, resolution_enc), 1 otherwise.
        n_classes: number of output logits.
        in_f_dim: F, fixed: the frequency strides and sub-bands are planned for it.
        width: channels of the first stage (the paper's 8 x tau): 40 (BC-ResNet-5) costs
            66 MFLOPs at C=1, t=101, F=40 with 133k parameters.
        dropout: channel dropout in each block's temporal branch and before the linear layer.
        sub_bands: frequency sub-bands of sub-spectral norm, fewer where F does not split.
    """

    def __init__(self, in_channels: int, n_classes: int, in_f_dim: int, width: int = 40,
                 dropout: float = 0.1, sub_bands: int = 5) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, n_classes=n_classes, in_f_dim=in_f_dim,
                    width=width, sub_bands=sub_bands, dropout=dropout)
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.in_f_dim = int(in_f_dim)
        channels = stage_channels(width)
        stem_channels = 2 * channels[0]
        self.input_norm = nn.BatchNorm2d(in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=(STEM_FREQ_STRIDE, 1), padding=1,
                      bias=False),
            nn.BatchNorm2d(stem_channels), nn.ReLU())
        blocks: list[nn.Module] = []
        cin, f = stem_channels, strided_size(in_f_dim, STEM_FREQ_STRIDE)
        for cout, n, stride, dilation in zip(channels, STAGE_BLOCKS, STAGE_FREQ_STRIDES,
                                             STAGE_DILATIONS):
            for i in range(n):
                s = stride if i == 0 else 1
                blocks.append(BroadcastedBlock(cin, cout, f, s, dilation, sub_bands, dropout))
                cin, f = cout, strided_size(f, s)
        self.blocks = nn.Sequential(*blocks)
        head_channels = 4 * channels[0]
        self.head_conv = nn.Sequential(
            nn.Conv2d(cin, cin, (f, 1), groups=cin, bias=False),  # F' -> 1
            nn.Conv2d(cin, head_channels, 1, bias=False),
            nn.BatchNorm2d(head_channels), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * head_channels, n_classes)

    def forward(self, feature: Tensor) -> Tensor:
        if feature.dim() != 4 or feature.shape[1] != self.in_channels \
                or feature.shape[3] != self.in_f_dim:
            raise ValueError(f"expected feature [B, {self.in_channels}, t, {self.in_f_dim}], "
                             f"got {list(feature.shape)}")
        x = self.input_norm(feature).transpose(2, 3)  # [B, C, F, t]: the paper's layout
        h = self.head_conv(self.blocks(self.stem(x))).squeeze(2)  # [B, 4 * width, t]
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return self.head(self.dropout(pooled))
