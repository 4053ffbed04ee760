"""How close DiffRes comes to the published pydiffres reference vectors, and why.

    python benchmarks/parity_report.py

For each reference case it prints the max abs difference of every output, for
(1) our linear-time DiffRes end to end, (2) the published dense formulation re-run here on
our scores, (3) our warping fed the published scores, and (4) for one-item cases whose
published scores imply a different float32 score total than ours, our module with that
total; then the gradient errors.
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.diffres import functional as Fn  # noqa: E402
from service.diffres.dense import dense_diffres  # noqa: E402
from tests.diffres.reference import CASES, implied_total, load_case  # noqa: E402

KEYS = ["score", "avgpool", "maxpool", "resolution_enc", "feature", "guide_loss", "activeness"]


def max_errors(out: dict, ref: dict, keys: list[str]) -> list[str]:
    return [f"{float(np.abs(out[k].detach().numpy() - ref[k]).max()):.1e}" for k in keys]


def gradient_errors(case: str) -> tuple[float, float]:
    model, ref = load_case(case)
    x = torch.from_numpy(ref["x"]).requires_grad_(True)
    out = model(x)
    loss = (out["feature"] * torch.from_numpy(ref["cotangent"])).sum() + out["guide_loss"].sum()
    loss.backward()

    def rel(a: torch.Tensor, b: np.ndarray) -> float:
        return float((a - torch.from_numpy(b)).norm() / np.linalg.norm(b))

    params = [rel(p.grad, ref[f"grad/state/{n}"]) for n, p in model.named_parameters()
              if p.requires_grad]
    return rel(x.grad, ref["grad/x"]), max(params)


def main() -> None:
    print("| case | computation | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for case in CASES:
        model, ref = load_case(case)
        x = torch.from_numpy(ref["x"])
        rate = float(ref["dimension_reduction_rate"])
        with torch.no_grad():
            ours = model(x)
            raw = torch.sigmoid(model.model(x.permute(0, 2, 1)).permute(0, 2, 1))
            dense = dense_diffres(x, raw, model.pos_emb, rate)
            avg, mx, enc = Fn.frame_warping(x.exp(), torch.from_numpy(ref["score"]),
                                            model.pos_emb, ref["avgpool"].shape[1], rate)
        staged = {"avgpool": avg, "maxpool": mx, "resolution_enc": enc,
                  "feature": torch.stack([avg, mx, enc], dim=1)}
        print(f"| {case} | linear, end to end | " + " | ".join(max_errors(ours, ref, KEYS)) + " |")
        print(f"| {case} | published dense, our scores | "
              + " | ".join(max_errors(dense, ref, KEYS)) + " |")
        print(f"| {case} | linear warping, published scores | - | "
              + " | ".join(max_errors(staged, ref, KEYS[1:5])) + " | - | - |")
        t = ref["avgpool"].shape[1]
        total = raw.sum(dim=(1, 2), keepdim=True)
        implied = implied_total(raw, ref["score"], t) if x.shape[0] == 1 else total
        if not torch.equal(implied, total):
            score = raw / implied * t
            avg, mx, enc = Fn.frame_warping(x.exp(), score, model.pos_emb, t, rate)
            guide, active = Fn.guide_loss_and_activeness(x.exp().mean(dim=-1), score, rate)
            nudged = {"score": score, "avgpool": avg, "maxpool": mx, "resolution_enc": enc,
                      "feature": torch.stack([avg, mx, enc], dim=1), "guide_loss": guide,
                      "activeness": active}
            ulps = int(implied.view(torch.int32).item() - total.view(torch.int32).item())
            print(f"| {case} | linear, score total {ulps:+d} ulp as published | "
                  + " | ".join(max_errors(nudged, ref, KEYS)) + " |")
    print()
    print("| case | grad x (rel L2) | worst parameter grad (rel L2) |")
    print("|---|---|---|")
    for case in CASES:
        if "t3000" in case:
            continue
        gx, gp = gradient_errors(case)
        print(f"| {case} | {gx:.1e} | {gp:.1e} |")


if __name__ == "__main__":
    main()
