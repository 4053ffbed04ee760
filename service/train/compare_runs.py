"""Runs side by side: a markdown table of what each one's best validation epoch scored, and
their validation accuracy per epoch in one plot, so a change of schedule or recipe reads at
a glance. Unfinished runs are shown as far as they got.

    python -m service.train.compare_runs RUN [RUN ...] [--plot runs.png]
"""

import argparse
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from service.train.report import (  # noqa: E402
    METRICS_FILE,
    RESULT_FILE,
    is_better,
    read_json,
    read_metrics,
)

CONFIG_FILE = "config.json"


def run_name(run: Path) -> str:
    """``parent/name``: runs of one configuration in two experiment folders stay apart."""
    return f"{run.parent.name}/{run.name}"


def run_row(run: Path) -> dict[str, Any]:
    """A run's schedule and figures: accuracies in percent, None where it has none yet."""
    if not (run / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{run} has no {METRICS_FILE}: not a training run")
    history = read_metrics(run / METRICS_FILE)
    config = read_json(run / CONFIG_FILE) if (run / CONFIG_FILE).is_file() else {}
    result = read_json(run / RESULT_FILE) if (run / RESULT_FILE).is_file() else {}

    def percent(key: str) -> float | None:
        return 100 * result[key] if result.get(key) is not None else None

    best = None
    for row in history:  # the epoch the trainer keeps and tests
        if is_better(row, best):
            best = row
    return {
        "run": run_name(run),
        "epochs_done": len(history),
        "epochs": config.get("epochs", len(history)),
        "finished": bool(result),
        "best_epoch": int(best["epoch"]) if best else None,
        "val_acc": 100 * best["val_acc"] if best else None,
        "test_acc": percent("test_acc"),
        "test_cross_acc": percent("test_cross_acc"),
        "minutes": sum(row["seconds"] for row in history) / 60,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    lines = ["| run | epochs | best val epoch | val acc (%) | test acc (%) | "
             "cross-engine acc (%) | minutes |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        epochs = str(r["epochs"]) if r["finished"] else (
            f"{r['epochs_done']} of {r['epochs']} (running)")
        lines.append(f"| {r['run']} | {epochs} | {r['best_epoch'] or ''} | "
                     f"{cell(r['val_acc'])} | {cell(r['test_acc'])} | "
                     f"{cell(r['test_cross_acc'])} | {r['minutes']:.0f} |")
    return "\n".join(lines)


def plot_val_acc(path: Path, histories: dict[str, list[dict[str, float]]]) -> None:
    """Validation accuracy per epoch, one line per run."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, history in histories.items():
        ax.plot([row["epoch"] for row in history], [100 * row["val_acc"] for row in history],
                ".-", label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of service.train")
    parser.add_argument("--plot", type=Path, help="write the validation curves here (PNG)")
    args = parser.parse_args(argv)
    try:
        rows = [run_row(run) for run in args.runs]
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(markdown_table(rows))
    if args.plot:
        plot_val_acc(args.plot, {run_name(run): read_metrics(run / METRICS_FILE)
                                 for run in args.runs})
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
