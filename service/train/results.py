"""From result.json files to docs/RESULTS.md: seed statistics, the paper's goals, a plot.

Pure functions over plain dicts (except the plot), so the goal logic is tested on fake
results. Accuracies are fractions in result.json and percentage points here.
"""

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Experiment:
    """One configuration of the comparison; ``method`` groups configs into plot series."""

    name: str
    method: str
    compressor: str
    rate: float
    hop_ms: float


EXPERIMENTS = (
    Experiment("full", "Full resolution", "full", 0.0, 10.0),
    Experiment("avgpool-0.5", "AvgPool", "avgpool", 0.5, 10.0),
    Experiment("avgpool-0.75", "AvgPool", "avgpool", 0.75, 10.0),
    Experiment("changehopsize-0.5", "ChangeHopSize", "changehopsize", 0.5, 10.0),
    Experiment("changehopsize-0.75", "ChangeHopSize", "changehopsize", 0.75, 10.0),
    Experiment("diffres-0.5", "DiffRes", "diffres", 0.5, 10.0),
    Experiment("diffres-0.75", "DiffRes", "diffres", 0.75, 10.0),
    Experiment("diffres-1ms-0.9", "DiffRes, 1 ms hop", "diffres", 0.9, 1.0),
)
BY_NAME = {exp.name: exp for exp in EXPERIMENTS}
# The generated report ends here; whatever a person wrote below it survives a rewrite.
REPORT_END = "<!-- end of the generated report: text below this line is kept on rewrite -->"


@dataclass(frozen=True)
class Summary:
    """One configuration over its seeds; accuracies in percent, std is the sample std
    (0 for a single seed)."""

    experiment: Experiment
    seeds: list[int]
    frames_kept: float
    test_mean: float
    test_std: float
    val_mean: float
    val_std: float
    mflops: float
    cpu_ms_b1: float
    cpu_ms_b64: float
    seconds_per_epoch: float
    # the engine-disjoint test (``test_cross``); None unless every seed has it
    cross_mean: float | None = None
    cross_std: float | None = None
    # per seed, for paired comparisons: {"test": {seed: acc}, "cross": {...}}
    by_seed: dict[str, dict[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    text: str
    met: bool | None  # None: a configuration it needs has no finished run
    detail: str


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(experiment: Experiment, results: list[dict[str, Any]]) -> Summary:
    """Aggregate the finished seeds of one configuration (results non-empty)."""
    test = _mean_std([100 * r["test_acc"] for r in results])
    val = _mean_std([100 * r["val_acc"] for r in results])
    cross = (_mean_std([100 * r["test_cross_acc"] for r in results])
             if all("test_cross_acc" in r for r in results) else (None, None))
    first = results[0]
    seeds = [r["config"]["seed"] for r in results]
    by_seed = {"test": {seed: 100 * r["test_acc"] for seed, r in zip(seeds, results)}}
    if cross[0] is not None:
        by_seed["cross"] = {seed: 100 * r["test_cross_acc"] for seed, r in zip(seeds, results)}
    return Summary(experiment, seeds,
                   first["frames_kept_fraction"], *test, *val, first["classifier_mflops"],
                   statistics.median(r["cpu_ms_per_clip_b1"] for r in results),
                   statistics.median(r["cpu_ms_per_clip_b64"] for r in results),
                   statistics.fmean(r["seconds_per_epoch"] for r in results), *cross,
                   by_seed)


def _at_least(text: str, summaries: dict[str, Summary], left: str, right: str,
              margin: float, split: str = "test") -> Goal:
    """Goal: mean accuracy of ``left`` on ``split`` ("test" or "cross") >= that of ``right``
    + margin (points)."""
    if left not in summaries or right not in summaries:
        missing = [n for n in (left, right) if n not in summaries]
        return Goal(text, None, f"not run: {', '.join(missing)}")
    a, b = (getattr(summaries[n], f"{split}_mean") for n in (left, right))
    if a is None or b is None:
        return Goal(text, None, "no cross-engine figure for every seed")
    return Goal(text, a >= b + margin,
                f"{left} {a:.2f}%, needs >= {b + margin:.2f}% ({right} {b:.2f}% "
                f"{margin:+.1f} pt); difference {a - b:+.2f} pt"
                + paired(summaries[left], summaries[right], split))


def paired(left: Summary, right: Summary, split: str) -> str:
    """The difference seed by seed, on the seeds both have: how much of a mean difference is
    the seed's luck (the same seed shares the data order and initialisation draws)."""
    a, b = left.by_seed.get(split, {}), right.by_seed.get(split, {})
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return ""
    diffs = [a[s] - b[s] for s in common]
    mean, std = _mean_std(diffs)
    return (f"; paired over seeds {' '.join(map(str, common))}: {mean:+.2f} ± {std:.2f} pt "
            f"({', '.join(f'{d:+.1f}' for d in diffs)})")


GOALS = (  # (text, left, right, margin in points)
    ("DiffRes at rate 0.5 is within 0.5 pt of full resolution", "diffres-0.5", "full", -0.5),
    ("DiffRes at rate 0.75 beats AvgPool at 0.75 by at least 1 pt", "diffres-0.75",
     "avgpool-0.75", 1.0),
    ("DiffRes at rate 0.75 is at least as good as ChangeHopSize at 0.75", "diffres-0.75",
     "changehopsize-0.75", 0.0),
    ("DiffRes on a 1 ms hop at rate 0.9 is at least as good as full resolution at 10 ms",
     "diffres-1ms-0.9", "full", 0.0),
)


def evaluate_goals(summaries: dict[str, Summary]) -> list[Goal]:
    """The paper's claims, checked on the in-distribution test means, then on the
    cross-engine ones (an engine family training never heard)."""
    return ([_at_least(text, summaries, *rest) for text, *rest in GOALS]
            + [_at_least(f"{text} (cross-engine)", summaries, *rest, split="cross")
               for text, *rest in GOALS])


def _status(goal: Goal) -> str:
    return "not run" if goal.met is None else ("met" if goal.met else "missed")


def results_markdown(summaries: dict[str, Summary], goals: list[Goal], command: str,
                     notes: list[str]) -> str:
    """docs/RESULTS.md: the table, the goals, the plot, the command that made them."""
    lines = ["# Results: DiffRes against fixed-resolution baselines", "",
             f"Made by `{command}`.", "", *notes, "",
             "Test accuracy is that of the best VALIDATION epoch of each run, as mean ± sample "
             "standard deviation over seeds. MFLOPs are the classifier's per clip; CPU ms per "
             "clip are compressor + classifier (front end excluded) at batch 1 / batch 64.", "",
             "| config | hop | frames kept | test acc (%) | cross-engine acc (%) | val acc (%) "
             "| classifier MFLOPs | CPU ms/clip b1 / b64 | s/epoch | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries.values():
        exp = s.experiment
        cross = "–" if s.cross_mean is None else f"{s.cross_mean:.2f} ± {s.cross_std:.2f}"
        lines.append(f"| {exp.name} | {exp.hop_ms:g} ms | {s.frames_kept:.3f} "
                     f"| {s.test_mean:.2f} ± {s.test_std:.2f} | {cross} "
                     f"| {s.val_mean:.2f} ± {s.val_std:.2f} "
                     f"| {s.mflops:.2f} | {s.cpu_ms_b1:.2f} / {s.cpu_ms_b64:.3f} "
                     f"| {s.seconds_per_epoch:.1f} | {' '.join(map(str, s.seeds))} |")
    lines += ["", "## The paper's goals, checked on these numbers", "",
              "| goal | measured | status |", "| --- | --- | --- |"]
    lines += [f"| {g.text} | {g.detail} | **{_status(g)}** |" for g in goals]
    lines += ["", "![accuracy against fraction of frames kept](results_accuracy_vs_frames.png)",
              "", REPORT_END, ""]
    return "\n".join(lines)


def with_kept_text(report: str, previous: str) -> str:
    """``report`` followed by what ``previous`` (the file it replaces) held below its
    ``REPORT_END``: analysis written by hand outlives the numbers it is about."""
    _, found, kept = previous.partition(REPORT_END)
    return report + "\n" + kept.lstrip("\n") if found else report


def plot_accuracy_vs_frames(path: Path, summaries: dict[str, Summary]) -> None:
    """Test accuracy against fraction of frames kept, one series per method, std bars."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = dict.fromkeys(s.experiment.method for s in summaries.values())
    if "full" in summaries:
        ax.axhline(summaries["full"].test_mean, color="grey", linestyle="--", linewidth=1,
                   label="full resolution (mean)")
    for method in methods:
        points = sorted((s.frames_kept, s.test_mean, s.test_std) for s in summaries.values()
                        if s.experiment.method == method)
        x, y, err = zip(*points, strict=True)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=method)
    ax.set(xlabel="fraction of frames kept (t / T)", ylabel="test accuracy (%)",
           title="Accuracy against temporal compression")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
