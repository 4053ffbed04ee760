"""The published fixed-resolution baselines, in exportable form.

Adaptive pooling is a gather over precomputed windows (registered buffers), so it exports
to ONNX at any T and t, which ``nn.AdaptiveAvgPool1d`` does not.
"""

import torch
from torch import Tensor

from service.diffres.diffres import Base
from service.diffres.estimator import ConvStack


def adaptive_windows(in_len: int, out_len: int) -> tuple[Tensor, Tensor]:
    """Windows of ``nn.AdaptiveAvgPool1d``: step i covers [floor(iT/t), ceil((i+1)T/t)).

    Returns (index [t, K] long, valid [t, K] bool), K the widest window.
    """
    i = torch.arange(out_len)
    start = torch.div(i * in_len, out_len, rounding_mode="floor")
    end = torch.div((i + 1) * in_len + out_len - 1, out_len, rounding_mode="floor")
    width = int((end - start).max())
    index = start.unsqueeze(1) + torch.arange(width).unsqueeze(0)
    valid = index < end.unsqueeze(1)
    return torch.where(valid, index, start.unsqueeze(1)), valid


def uniform_indices(in_len: int, out_len: int) -> Tensor:
    """Frames kept by the published ChangeHopSize: int() of linspace(0, T-1, t) in float32."""
    return torch.linspace(0, in_len - 1, out_len).long()


def window_mean(x: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """[B, T, F] -> [B, t, F]: mean over each window."""
    mask = valid.unsqueeze(-1).to(x.dtype)
    return (x[:, index] * mask).sum(dim=2) / mask.sum(dim=1)


def window_max(x: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """[B, T, F] -> [B, t, F]: max over each window."""
    return x[:, index].masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=2)


class _WindowPool(Base):
    feature_channels = 1

    def __init__(self, in_t_dim: int, in_f_dim: int, dimension_reduction_rate: float,
                 learn_pos_emb: bool = False) -> None:
        super().__init__(in_t_dim, in_f_dim, dimension_reduction_rate, learn_pos_emb)
        index, valid = adaptive_windows(self.input_seq_length, self.output_seq_length)
        self.register_buffer("window_index", index, persistent=False)
        self.register_buffer("window_valid", valid, persistent=False)

    def _result(self, x: Tensor, feature: Tensor, avgpool: Tensor | None = None,
                maxpool: Tensor | None = None) -> dict[str, Tensor | None]:
        zero = x.new_zeros(1)
        return {"x": x, "score": None, "resolution_enc": None, "avgpool": avgpool,
                "maxpool": maxpool, "feature": feature, "guide_loss": zero, "activeness": zero}


class AvgPool(_WindowPool):
    """Adaptive average pooling over time. feature [B, 1, t, F]."""

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        self._check_input(x)
        avg = window_mean(x, self.window_index, self.window_valid).unsqueeze(1)
        return self._result(x, avg, avgpool=avg)


class AvgMaxPool(_WindowPool):
    """Adaptive average plus adaptive max pooling (summed, as published). feature [B, 1, t, F]."""

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        self._check_input(x)
        avg = window_mean(x, self.window_index, self.window_valid).unsqueeze(1)
        peak = window_max(x, self.window_index, self.window_valid).unsqueeze(1)
        return self._result(x, avg + peak, avgpool=avg, maxpool=peak)


class ConvAvgPool(_WindowPool):
    """A learnt residual conv over time, then adaptive average pooling. feature [B, 1, t, F].

    The published estimator of this baseline (``DilatedConv_Out_128``) is missing from the
    wheel; here it is two residual blocks F -> F -> F of the DiffRes estimator kind.
    """

    def __init__(self, in_t_dim: int, in_f_dim: int, dimension_reduction_rate: float,
                 learn_pos_emb: bool = False) -> None:
        super().__init__(in_t_dim, in_f_dim, dimension_reduction_rate, learn_pos_emb)
        self.model = ConvStack([in_f_dim, in_f_dim, in_f_dim])

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        self._check_input(x)
        h = self.model(x.permute(0, 2, 1)).permute(0, 2, 1) + x
        return self._result(x, window_mean(h, self.window_index, self.window_valid).unsqueeze(1))


class ChangeHopSize(Base):
    """Keep t uniformly spaced frames: the same as a larger hop. feature [B, 1, t, F]."""

    feature_channels = 1

    def __init__(self, in_t_dim: int, in_f_dim: int, dimension_reduction_rate: float,
                 learn_pos_emb: bool = False) -> None:
        super().__init__(in_t_dim, in_f_dim, dimension_reduction_rate, learn_pos_emb)
        self.register_buffer("keep", uniform_indices(in_t_dim, self.output_seq_length),
                             persistent=False)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        self._check_input(x)
        zero = x.new_zeros(1)
        return {"x": x, "score": None, "resolution_enc": None, "avgpool": None, "maxpool": None,
                "feature": x[:, self.keep].unsqueeze(1), "guide_loss": zero, "activeness": zero}


class FullResolution(Base):
    """No compression (rate 0): the full-resolution reference. feature [B, 1, T, F]."""

    feature_channels = 1

    def __init__(self, in_t_dim: int, in_f_dim: int, dimension_reduction_rate: float = 0.0,
                 learn_pos_emb: bool = False) -> None:
        super().__init__(in_t_dim, in_f_dim, 0.0, learn_pos_emb)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        self._check_input(x)
        zero = x.new_zeros(1)
        return {"x": x, "score": None, "resolution_enc": None, "avgpool": None, "maxpool": None,
                "feature": x.unsqueeze(1), "guide_loss": zero, "activeness": zero}
