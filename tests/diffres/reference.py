"""Loading the published module's reference vectors (tests/fixtures/pydiffres_*.npz)."""

from pathlib import Path

import numpy as np
import torch

from service.diffres import DiffRes

FIXTURES = Path(__file__).parent.parent / "fixtures"
CASES = sorted(p.stem for p in FIXTURES.glob("pydiffres_*.npz"))


def load_case(name: str) -> tuple[DiffRes, dict[str, np.ndarray]]:
    """The reference arrays and a DiffRes in eval mode holding the published weights."""
    data = dict(np.load(FIXTURES / f"{name}.npz"))
    model = DiffRes(int(data["in_t_dim"]), int(data["in_f_dim"]),
                    float(data["dimension_reduction_rate"]))
    state = {k.removeprefix("state/"): torch.from_numpy(v)
             for k, v in data.items() if k.startswith("state/")}
    model.load_state_dict(state, strict=True)
    return model.eval(), data


def implied_total(raw: torch.Tensor, published: np.ndarray, t: int) -> torch.Tensor:
    """The float32 score total of a one-item case, within 4 ulps of ours, that best reproduces
    the published scores."""
    ours = raw.detach().sum(dim=(1, 2), keepdim=True)
    candidates = [ours]
    for direction in (float("inf"), float("-inf")):
        value = ours
        for _ in range(4):
            value = torch.nextafter(value, torch.full_like(value, direction))
            candidates.append(value)
    hits = [int((raw.detach() / c * t == torch.from_numpy(published)).sum()) for c in candidates]
    return candidates[int(np.argmax(hits))]
