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
