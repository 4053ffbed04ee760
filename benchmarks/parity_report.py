"""How close DiffRes comes to the published pydiffres reference vectors, and why.

    python benchmarks/parity_report.py

Prints, per reference case: how many ulps our normalised scores are from the published ones;
the max abs difference of every output end to end, of the published dense formulation re-run
here on our scores, and of our warping fed the published scores; how many output rows match
within the issue's tolerances and how many sit next to a step boundary that our scores moved;
then the gradient errors with our scores and with the published scores' values. The
yardsticks are those of tests/diffres/test_parity.py (tests/diffres/reference.py).
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.diffres import functional as Fn  # noqa: E402
from service.diffres.dense import dense_diffres  # noqa: E402
from tests.diffres.reference import (  # noqa: E402
    CASES,
    OUTPUT_TOL,
    ROW_OUTPUTS,
    forward_with_scores,
    gradient_errors,
    load_case,
    moved_rows,
    row_errors,
    score_ulps,
)

KEYS = ["score", "avgpool", "maxpool", "resolution_enc", "feature", "guide_loss", "activeness"]


def max_errors(out: dict, ref: dict, keys: list[str]) -> list[str]:
    return [f"{float(np.abs(out[k].detach().numpy() - ref[k]).max()):.1e}" for k in keys]


def _worst(errors: dict[str, float]) -> float:
    """The largest parameter-gradient error."""
    return max(v for k, v in errors.items() if k != "x")


def main() -> None:
    print("| case | computation | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    rows = []
    for case in CASES:
        model, ref = load_case(case)
        x = torch.from_numpy(ref["x"])
        rate, t = float(ref["dimension_reduction_rate"]), model.output_seq_length
        published = torch.from_numpy(ref["score"])
        with torch.no_grad():
            ours = model(x)
            raw = torch.sigmoid(model.model(x.permute(0, 2, 1)).permute(0, 2, 1))
            dense = dense_diffres(x, raw, model.pos_emb, rate)
            avg, mx, enc = Fn.frame_warping(x.exp(), published, model.pos_emb, t, rate)
        fed = {"avgpool": avg, "maxpool": mx, "resolution_enc": enc,
               "feature": torch.stack([avg, mx, enc], dim=1)}
        print(f"| {case} | linear, end to end | " + " | ".join(max_errors(ours, ref, KEYS)) + " |")
        print(f"| {case} | published dense, our scores | "
              + " | ".join(max_errors(dense, ref, KEYS)) + " |")
        print(f"| {case} | linear warping, published scores | - | "
              + " | ".join(max_errors(fed, ref, KEYS[1:5])) + " | - | - |")
        moved = moved_rows(ours["score"], published, t).numpy()
        for key in ROW_OUTPUTS:
            tol = OUTPUT_TOL[key]
            miss = row_errors(ours[key], ref[key]) > tol
            fed_miss = row_errors(fed[key], ref[key]) > tol
            rows.append((case, key, score_ulps(ours["score"], ref["score"]), miss.size,
                         int(miss.sum()), int(moved.sum()), int((miss & fed_miss).sum()),
                         int((miss & ~fed_miss & ~moved).sum())))

    print()
    print("| case | output | score ulps | rows | rows missing the tolerance | rows next to a "
          "moved boundary | missed fed the published scores too | missed, unexplained |")
    print("|---|---|---|---|---|---|---|---|")
    for case, key, ulps, n, miss, moved, fed, unexplained in rows:
        print(f"| {case} | {key} | {ulps:.0f} | {n} | {miss} | {moved} | {fed} | {unexplained} |")
    total, missing = sum(r[3] for r in rows), sum(r[4] for r in rows)
    print(f"\nrows within tolerance: {total - missing} of {total} "
          f"({100 * (total - missing) / total:.1f} %)")

    print()
    print("| case | grad x, our scores | worst parameter, our scores | grad x, published "
          "scores' values | worst parameter, published scores' values |")
    print("|---|---|---|---|---|")
    for case in CASES:
        if "t3000" in case:
            continue
        model, ref = load_case(case)
        x = torch.from_numpy(ref["x"]).requires_grad_(True)
        own = gradient_errors(model(x), x, model, ref)
        pinned = gradient_errors(forward_with_scores(model, x, torch.from_numpy(ref["score"])),
                                 x, model, ref)
        print(f"| {case} | {own['x']:.1e} | {_worst(own):.1e} | {pinned['x']:.1e} | "
              f"{_worst(pinned):.1e} |")


if __name__ == "__main__":
    main()
