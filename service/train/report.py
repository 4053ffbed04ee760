"""What a run leaves behind for people: metrics.csv, curves.png and result.json."""

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# lr is the rate of the epoch's first step; seconds cover its training and validation.
METRIC_COLUMNS = ("epoch", "train_loss", "train_ce", "guide_loss", "val_loss", "val_acc", "lr",
                  "seconds")
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
RESULT_FILE = "result.json"


def write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    """Rewritten whole each epoch from the checkpointed history, so a resume never duplicates."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def is_better(row: dict[str, float], best: dict[str, float] | None) -> bool:
    """Higher validation accuracy wins; a tie goes to the lower validation loss."""
    return best is None or (row["val_acc"], -row["val_loss"]) > (best["val_acc"],
                                                                 -best["val_loss"])


def plot_curves(path: Path, history: list[dict[str, float]], title: str = "") -> None:
    """Loss (train, its CE and guide parts, validation) and validation accuracy per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train_loss", "-"), ("train_ce", "--"), ("guide_loss", ":"),
                       ("val_loss", "-")):
        ax_loss.plot(epochs, [row[key] for row in history], style, label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * row["val_acc"] for row in history], "o-", label="val_acc")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
