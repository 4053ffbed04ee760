"""Where a model fails: its accuracy on one split of a dataset, grouped by how clips were made.

    python -m service.train.breakdown --model model_store/kws12-diffres/5 \
        --data data/kws12-all --split test --by snr --by room

Every clip goes through ``service.predict`` (the exported files, the server's windows and
aggregate rule), and its top label is compared with its label. Groups come from the
dataset's ``metadata.csv`` (docs/DATASET.md); several ``--by`` cross their groups. Prints a
markdown table: group, clips, accuracy.
"""

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.train.breakdown",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model version directory")
    parser.add_argument("--data", type=Path, required=True, help="a dataset root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--by", action="append", choices=sorted(GROUPS), required=True,
                        help="group clips by this (repeat to cross groups)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    found = grouped_accuracy(split_predictions(Predictor(args.model), args.data, args.split),
                             args.by)
    if not found:
        raise SystemExit(f"{args.data} has no clips in split {args.split!r}")
    print(table(found, args.by))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
