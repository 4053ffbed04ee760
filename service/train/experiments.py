"""Run the DiffRes comparison and write docs/RESULTS.md and its plot.

    python -m service.train.experiments --data data/kws12 --seeds 0 1 --epochs 30 --out runs/exp

Runs one after another (two cores are not worth splitting). A run whose result.json exists
is skipped and an interrupted one resumes from its checkpoint, so the command can simply be
started again. ``--only`` selects configurations; ``--report-only`` just rewrites the docs: the
generated table, goals and plot, keeping the analysis written below them (``REPORT_END``).
"""

import argparse
import shlex
import sys
from datetime import date
from pathlib import Path
from typing import Any

from service.train.config import CLASSIFIERS, DEFAULT_WIDTHS, TrainConfig
from service.train.data import held_out_splits, read_metadata
from service.train.report import RESULT_FILE, read_json
from service.train.results import (
    BY_NAME,
    EXPERIMENTS,
    Experiment,
    evaluate_goals,
    plot_accuracy_vs_frames,
    results_markdown,
    summarize,
    with_kept_text,
)
from service.train.trainer import add_held_out, train

PLOT_FILE = "results_accuracy_vs_frames.png"


def run_dir(out: Path, experiment: Experiment, seed: int) -> Path:
    return Path(out) / f"{experiment.name}-s{seed}"


def run_config(args: argparse.Namespace, experiment: Experiment, seed: int) -> TrainConfig:
    return TrainConfig(data=args.data, out=str(run_dir(args.out, experiment, seed)),
                       compressor=experiment.compressor, rate=experiment.rate,
                       hop_ms=experiment.hop_ms, epochs=args.epochs,
                       batch_size=args.batch_size, seed=seed, mixup=args.mixup,
                       threads=args.threads, classifier=args.classifier,
                       width=DEFAULT_WIDTHS[args.classifier])


def run_all(args: argparse.Namespace, experiments: list[Experiment]) -> None:
    held_out = held_out_splits(read_metadata(Path(args.data)))  # finished runs get any they lack
    for experiment in experiments:
        for seed in args.seeds:
            cfg = run_config(args, experiment, seed)
            result_path = Path(cfg.out) / RESULT_FILE
            if result_path.is_file():
                if any(f"{name}_acc" not in read_json(result_path) for name in held_out):
                    print(f"test {cfg.out} on the held-out split", flush=True)
                    add_held_out(TrainConfig.load(Path(cfg.out)))
                print(f"skip {cfg.out}: finished")
                continue
            print(f"run {cfg.out}", flush=True)
            train(cfg, resume=True)


def collect(out: Path, experiments: list[Experiment], seeds: list[int]
            ) -> dict[str, list[dict[str, Any]]]:
    """Finished results per configuration name; configurations with none are left out."""
    found = {}
    for experiment in experiments:
        paths = [run_dir(out, experiment, seed) / RESULT_FILE for seed in seeds]
        results = [read_json(p) for p in paths if p.is_file()]
        if results:
            found[experiment.name] = results
    return found


def describe_runs(found: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Notes for RESULTS.md taken from the runs themselves, not from this command's flags."""
    results = [r for rs in found.values() for r in rs]
    if not results:
        return ["No finished runs yet."]

    def values(key: str) -> str:
        return ", ".join(str(v) for v in sorted({r["config"][key] for r in results}))

    counts = results[0]["dataset"]["counts"]
    return [f"Dataset `{results[0]['config']['data']}` ({counts['train']} train, "
            f"{counts['validation']} validation, {counts['test']} test clips); epochs "
            f"{values('epochs')}, batch {values('batch_size')}, mixup {values('mixup')}, "
            f"guide loss weight {values('guide_loss_weight')}; seeds {values('seed')}; "
            f"made on {date.today().isoformat()}."]


def write_report(args: argparse.Namespace, experiments: list[Experiment], command: str) -> Path:
    found = collect(args.out, experiments, args.seeds)
    summaries = {name: summarize(BY_NAME[name], results) for name, results in found.items()}
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    if summaries:
        plot_accuracy_vs_frames(docs / PLOT_FILE, summaries)
    text = results_markdown(summaries, evaluate_goals(summaries), command, describe_runs(found))
    path = docs / "RESULTS.md"
    path.write_text(with_kept_text(text, path.read_text() if path.is_file() else ""))
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m service.train.experiments",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/exp"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mixup", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--classifier", choices=CLASSIFIERS, default="cnn",
                        help="cnn (~8 MFLOPs) or bcresnet (66 MFLOPs at full resolution), each "
                             "at its own width")
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), default=None)
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    experiments = [BY_NAME[n] for n in args.only] if args.only else list(EXPERIMENTS)
    if not args.report_only:
        run_all(args, experiments)
    path = write_report(args, list(EXPERIMENTS), "python -m service.train.experiments "
                        + shlex.join(argv))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
