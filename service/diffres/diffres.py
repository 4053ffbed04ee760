"""DiffRes: learn which spectrogram frames to keep, merge the rest (Liu et al., 2022)."""

import torch
from torch import Tensor, nn

from service.diffres import functional as Fn
from service.diffres.estimator import importance_estimator


class Base(nn.Module):
    """Shared constructor of DiffRes and the pooling baselines (the published ``Base``).

    Args:
        in_t_dim: frames T of every input.
        in_f_dim: mel bins F.
        dimension_reduction_rate: fraction of frames removed, in [0, 1).
        learn_pos_emb: make the resolution-encoding table trainable.
    """

    def __init__(self, in_t_dim: int, in_f_dim: int, dimension_reduction_rate: float,
                 learn_pos_emb: bool = False) -> None:
        super().__init__()
        if not 0.0 <= dimension_reduction_rate < 1.0:
            raise ValueError(f"dimension_reduction_rate must be in [0, 1), got "
                             f"{dimension_reduction_rate}")
        if in_t_dim < 1 or in_f_dim < 1:
            raise ValueError(f"in_t_dim and in_f_dim must be positive, got {in_t_dim}, {in_f_dim}")
        self.dimension_reduction_rate = float(dimension_reduction_rate)
        self.input_seq_length = int(in_t_dim)
        self.input_f_dim = int(in_f_dim)
        self.output_seq_length = Fn.output_length(in_t_dim, dimension_reduction_rate)
        if self.output_seq_length < 1:
            raise ValueError(f"in_t_dim={in_t_dim} at rate {dimension_reduction_rate} "
                             "leaves no output frame")
        self.pos_emb = nn.Parameter(Fn.sinusoidal_position_table(in_t_dim, in_f_dim),
                                    requires_grad=learn_pos_emb)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.input_seq_length or x.shape[2] != self.input_f_dim:
            raise ValueError(f"expected input [B, {self.input_seq_length}, {self.input_f_dim}], "
                             f"got {list(x.shape)}")


class DiffRes(Base):
    """Differentiable temporal resolution. forward(x [B, T, F] natural-log mel) returns a dict:

    score [B, T, 1], avgpool / maxpool / resolution_enc [B, t, F], feature [B, 3, t, F],
    guide_loss and activeness [1], and x itself. Without autograd (eager inference), avgpool,
    maxpool and resolution_enc are views of feature.
    """

    feature_channels = 3

    def __init__(self, in_t_dim: int, in_f_dim: int, dimension_reduction_rate: float,
                 learn_pos_emb: bool = False) -> None:
        super().__init__(in_t_dim, in_f_dim, dimension_reduction_rate, learn_pos_emb)
        self.model = importance_estimator(in_f_dim)

    def importance(self, x: Tensor) -> Tensor:
        """Normalised frame importance [B, T, 1]: sums to t, each score <= 1."""
        raw = torch.sigmoid(self.model(x.permute(0, 2, 1)).permute(0, 2, 1))
        return Fn.normalize_scores(raw, self.output_seq_length)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._check_input(x)
        score = self.importance(x)
        # Eager inference takes the chunked, in-place warping: the same numbers for a fraction
        # of the memory traffic. TorchScript drops this branch, but only if is_scripting() is
        # tested alone, so the scripted and exported graphs are those of the code below.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if not Fn.needs_graph(x, score, self.pos_emb):
                feature, energy = Fn.frame_warping_from_log(
                    x, score, self.pos_emb, self.output_seq_length,
                    self.dimension_reduction_rate
                )
                avgpool, maxpool, resolution_enc = feature.unbind(1)
                return self._result(x, score, avgpool, maxpool, resolution_enc, feature, energy)
        linear = x.exp()
        avgpool, maxpool, resolution_enc = Fn.frame_warping(
            linear, score, self.pos_emb, self.output_seq_length, self.dimension_reduction_rate
        )
        feature = torch.stack([avgpool, maxpool, resolution_enc], dim=1)
        return self._result(x, score, avgpool, maxpool, resolution_enc, feature,
                            linear.mean(dim=-1))

    def _result(self, x: Tensor, score: Tensor, avgpool: Tensor, maxpool: Tensor,
                resolution_enc: Tensor, feature: Tensor, energy: Tensor) -> dict[str, Tensor]:
        """The output dict of either warping path, with the guide loss from the per-frame
        energy [B, T]."""
        guide_loss, activeness = Fn.guide_loss_and_activeness(
            energy, score, self.dimension_reduction_rate
        )
        return {
            "x": x,
            "score": score,
            "resolution_enc": resolution_enc,
            "avgpool": avgpool,
            "maxpool": maxpool,
            "feature": feature,
            "guide_loss": guide_loss,
            "activeness": activeness,
        }

    def visualize(self, ret: dict[str, Tensor], savepath: str = ".") -> list[str]:
        """Write one PNG per item (up to 10); returns the paths."""
        from service.diffres.visualize import plot_diffres

        return plot_diffres(ret, savepath)
