"""Pictures of what DiffRes did: where it looked, what it kept."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def plot_diffres(ret: dict[str, Tensor], savepath: str | Path = ".", limit: int = 10) -> list[str]:
    """One PNG per item (at most ``limit``): score, input, compressed input, resolution encoding."""
    out_dir = Path(savepath)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = ret["x"].detach().cpu().numpy()
    score = ret["score"].detach().cpu().numpy()
    avgpool = ret["avgpool"].detach().cpu().numpy()
    enc = ret["resolution_enc"].detach().cpu().numpy()
    paths = []
    for i in range(min(limit, x.shape[0])):
        fig, axes = plt.subplots(4, 1, figsize=(8, 12), constrained_layout=True)
        axes[0].plot(score[i, :, 0])
        axes[0].set_ylim(0, 1.05)
        axes[0].set_xlim(0, score.shape[1] - 1)
        axes[0].set_title("Importance score")
        axes[0].set_xlabel("input frame")
        panels = [(x[i], "Original log-mel spectrogram"),
                  (avgpool[i], f"DiffRes log-mel ({avgpool.shape[1]} of {x.shape[1]} frames, "
                               "avgpool aggregation)"),
                  (enc[i], "Resolution encoding")]
        for ax, (image, title) in zip(axes[1:], panels):
            ax.imshow(image.T, aspect="auto", origin="lower", interpolation="none")
            ax.set_title(title)
            ax.set_ylabel("mel bin")
        path = out_dir / f"{i}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(str(path))
    return paths
