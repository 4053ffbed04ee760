"""Where a model fails: its accuracy on one split of a dataset, grouped by how clips were made.

    python -m service.train.breakdown --model model_store/kws12-diffres/6 \
        --data data/kws12-all --split test --by snr --by room

Every clip goes through ``service.predict`` (the exported files, the server's windows and
aggregate rule), and its top label is compared with its label. Groups come from the
dataset's ``metadata.csv`` (docs/DATASET.md); several ``--by`` cross their groups. Prints a
markdown table: group, clips, accuracy. ``--confusion PNG`` also draws which label each
label is taken for, and prints the most frequent mistakes.
"""

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
from tqdm import tqdm

from service.predict import Predictor
from service.train.data import read_metadata

Row = dict[str, str]
SPEECHLESS = "(non-speech)"


def _snr(row: Row) -> str:
    if not row["speaker"]:
        return SPEECHLESS
    if not row["snr_db"]:
        return "clean"
    snr = float(row["snr_db"])
    return "SNR < 0 dB" if snr < 0 else "SNR 0-10 dB" if snr < 10 else "SNR >= 10 dB"


# Table order where names do not sort by meaning: cleanest first, non-speech last.
ORDER = ("clean", "SNR >= 10 dB", "SNR 0-10 dB", "SNR < 0 dB", SPEECHLESS)


def _order(group: tuple[str, ...]) -> tuple:
    """Sort key: names of ORDER by their place in it; any other name alphabetically, after
    them but before non-speech."""
    return tuple((ORDER.index(g) if g in ORDER else ORDER.index(SPEECHLESS) - 0.5, g)
                 for g in group)


GROUPS: dict[str, Callable[[Row], str]] = {
    "label": lambda r: r["label"],
    "family": lambda r: r["family"] or SPEECHLESS,
    "noise": lambda r: r["noise"] or "clean",
    "channel": lambda r: r["channel"] or "none",
    "snr": _snr,
    "room": lambda r: SPEECHLESS if not r["speaker"] else "room" if r["rt60_s"] else "dry",
    "context": lambda r: (SPEECHLESS if not r["speaker"] else
                          "beside another word" if r.get("context") else "alone"),
}


def split_predictions(predictor: Predictor, root: Path, split: str) -> Iterator[tuple[Row, str]]:
    """Each metadata row of ``split`` with the model's top label for its clip."""
    labels, rate = predictor.manifest.labels, predictor.manifest.frontend.sample_rate
    rows = [r for r in read_metadata(root) if r["split"] == split]
    for row in tqdm(rows, desc=split, leave=False):
        wave, clip_rate = sf.read(root / row["path"], dtype="float32")
        if clip_rate != rate:
            raise ValueError(f"{row['path']}: {clip_rate} Hz, the model takes {rate}")
        yield row, labels[int(np.argmax(predictor.classify(wave)["probabilities"]))]


def grouped_accuracy(pairs: Iterable[tuple[Row, str]], by: list[str]
                     ) -> dict[tuple[str, ...], tuple[int, int]]:
    """(group, ...) -> (right, clips)."""
    counts: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    for row, top in pairs:
        count = counts[tuple(GROUPS[key](row) for key in by)]
        count[0] += top == row["label"]
        count[1] += 1
    return {group: (right, n) for group, (right, n) in counts.items()}


def table(found: dict[tuple[str, ...], tuple[int, int]], by: list[str]) -> str:
    head = " | ".join(by)
    lines = [f"| {head} | clips | accuracy (%) |", "|" + " --- |" * len(by) + " ---: | ---: |"]
    for group in sorted(found, key=_order):
        right, n = found[group]
        lines.append(f"| {' | '.join(group)} | {n} | {100 * right / n:.1f} |")
    right, n = map(sum, zip(*found.values(), strict=True))
    lines.append(f"| all{' |' * (len(by) - 1)} | {n} | {100 * right / n:.1f} |")
    return "\n".join(lines)


def confusion(pairs: Iterable[tuple[Row, str]], labels: list[str]) -> np.ndarray:
    """[true, predicted] clip counts, rows and columns in ``labels``' order."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for row, top in pairs:
        if row["label"] not in index:
            raise ValueError(f"clip label {row['label']!r} is not one of the model's labels "
                             f"{labels}")
        counts[index[row["label"]], index[top]] += 1
    return counts


def top_mistakes(counts: np.ndarray, labels: list[str], n: int = 10) -> list[str]:
    """The ``n`` most frequent (true -> predicted) mistakes, with their share of the true
    label's clips, most frequent first."""
    wrong = [(counts[t, p], t, p) for t in range(len(labels)) for p in range(len(labels))
             if t != p and counts[t, p]]
    wrong.sort(key=lambda w: (-w[0], w[1], w[2]))
    return [f"{labels[t]} -> {labels[p]}: {c} of {counts[t].sum()} "
            f"({100 * c / counts[t].sum():.1f} %)" for c, t, p in wrong[:n]]


def plot_confusion(path: Path, counts: np.ndarray, labels: list[str], title: str) -> None:
    """Row-normalised: each cell is the share of that true label's clips."""
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.55 * len(labels) + 2.5, 0.55 * len(labels) + 1.5))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for t, p in np.ndindex(shares.shape):
        if counts[t, p]:
            ax.text(p, t, f"{100 * shares[t, p]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if shares[t, p] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.train.breakdown",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model version directory")
    parser.add_argument("--data", type=Path, required=True, help="a dataset root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--by", action="append", choices=sorted(GROUPS), required=True,
                        help="group clips by this (repeat to cross groups)")
    parser.add_argument("--confusion", type=Path, metavar="PNG",
                        help="also draw the confusion matrix here (percent of each true label)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    predictor = Predictor(args.model)
    pairs = list(split_predictions(predictor, args.data, args.split))
    found = grouped_accuracy(pairs, args.by)
    if not found:
        raise SystemExit(f"{args.data} has no clips in split {args.split!r}")
    print(table(found, args.by))
    if args.confusion:
        labels = predictor.manifest.labels
        try:
            counts = confusion(pairs, labels)
        except ValueError as exc:
            raise SystemExit(f"{args.data}: {exc}") from None
        plot_confusion(args.confusion, counts, labels,
                       f"{args.model} on {args.data} ({args.split}, {len(pairs)} clips)")
        print("\nmost frequent mistakes:\n" + "\n".join(top_mistakes(counts, labels)))
        print(f"wrote {args.confusion}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
