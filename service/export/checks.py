"""Check an exported file against the eager module it came from, output by output.

Inputs are the shipped real clip (``check_audio``) and white noise at random levels with
stretches of digital silence, at several batch sizes and lengths. First the eager module
itself must answer the same twice, and the same alone as in a batch (the server batches
requests together); then each file must agree with it. A failure names the file, the output,
the batch size, the difference, and the likeliest cause.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from service.errors import ExportCheckError
from service.export import check_audio
from service.export.formats import Runner, eager_runner
from service.manifest import FRAME_SCORES, FRONTEND_OUTPUT, FRONTEND_TOLERANCE, PROBABILITIES

# Batch sizes the files are checked at; exports trace at TRACE_BATCH.
CHECK_BATCH_SIZES = (1, 3, 17)
TRACE_BATCH = 2
# Largest |exported - eager| each output may show. The compressed maps are log-means over
# step boundaries that move with float rounding (docs/PARITY.md): 1e-2 log units is 1 %. A
# front end's output is in its own units: 1e-2 is 1 % of power in natural log, 0.2 % in dB,
# where bins 80 dB below a frame's peak carry float32 DFT errors of ~1e-3.
DEFAULT_TOLERANCES: dict[str, float] = {
    PROBABILITIES: 1e-4, FRAME_SCORES: 1e-4, "avgpool": 1e-2, "maxpool": 1e-2,
    "resolution_enc": 1e-3, FRONTEND_OUTPUT: FRONTEND_TOLERANCE,
}
# Outputs whose rows (one per item and output step, [..., F]) are pooled between DiffRes step
# boundaries. Float rounding moves a boundary where a cumulative score sits within ulps of an
# integer (docs/PARITY.md), and a moved boundary changes its rows by up to the loudest frame it
# moved (nats, not 1e-2), while a broken export misses in most rows. So the worst
# MOVED_ROW_SHARE of their rows (at least MIN_MOVED_ROWS) are left out of the difference.
STEP_POOLED = frozenset({"avgpool", "maxpool"})
MOVED_ROW_SHARE = 0.02
MIN_MOVED_ROWS = 2


def noise_waveforms(batch: int, n_samples: int, generator: torch.Generator) -> Tensor:
    """[batch, n_samples] white noise at random levels (about -60 to 0 dBFS) with a stretch
    of digital silence in most items, so check inputs look like real input."""
    gain = 10.0 ** (-3.0 * torch.rand(batch, 1, generator=generator))
    wave = torch.randn(batch, n_samples, generator=generator) * gain
    for i in range(batch):
        if i % 4 != 3:  # some items have no silence at all
            length = int(torch.randint(1, max(n_samples // 3, 2), (1,), generator=generator))
            start = int(torch.randint(0, max(n_samples - length, 1), (1,), generator=generator))
            wave[i, start:start + length] = 0.0
    return wave


def real_waveforms(batch: int, n_samples: int, sample_rate: int) -> Tensor:
    """[batch, n_samples] of the real check clip: item i starts i / batch of the way in (the
    clip repeats), at a gain falling 6 dB an item."""
    clip = torch.from_numpy(check_audio.load(sample_rate))
    repeats = -(-(n_samples + len(clip)) // len(clip))
    looped = clip.repeat(repeats)
    items = [looped[i * len(clip) // batch:][:n_samples] * 0.5 ** i for i in range(batch)]
    return torch.stack(items)


def check_waveforms(batch_sizes: Sequence[int], n_samples: int, sample_rate: int,
                    seed: int) -> list[Tensor]:
    """For each batch size, real clips and noise, half each, of varying lengths."""
    g = torch.Generator().manual_seed(seed)
    waves = []
    for i, batch in enumerate(batch_sizes):
        length = n_samples + 37 * i
        real = real_waveforms((batch + 1) // 2, length, sample_rate)
        waves.append(torch.cat([real, noise_waveforms(batch // 2, length, g)])[:batch])
    return waves


def max_differences(reference: Runner, candidate: Runner, x: Tensor,
                    names: Sequence[str]) -> dict[str, float]:
    """Largest |candidate - reference| per output on ``x``; shape or NaN mismatches count
    as infinite."""
    expected, actual = reference(x), candidate(x)
    if len(actual) != len(names):
        raise ExportCheckError(f"expected {len(names)} outputs {list(names)}, got {len(actual)}")
    return {name: difference(name, e, a) for name, e, a in zip(names, expected, actual)}


def difference(name: str, expected: Tensor, actual: Tensor) -> float:
    """Largest |actual - expected|; for ``STEP_POOLED`` outputs, over all rows but the worst
    share that a moved step boundary may explain. Shape or NaN mismatches are infinite."""
    e, a = expected.detach().cpu().float(), actual.detach().cpu().float()
    if e.shape != a.shape or not torch.equal(e.isnan(), a.isnan()):
        return float("inf")
    diff = (e - a).abs().nan_to_num(0.0)
    if not diff.numel():
        return 0.0
    if name not in STEP_POOLED or diff.ndim < 2:
        return float(diff.max())
    rows = diff.reshape(-1, diff.shape[-1]).amax(dim=1).sort().values
    moved = max(MIN_MOVED_ROWS, int(MOVED_ROW_SHARE * len(rows)))
    return float(rows[-moved - 1]) if len(rows) > moved else 0.0


def likely_cause(candidate: Runner, eager: Runner, x: Tensor, names: Sequence[str],
                 name: str, tolerance: float) -> str:
    """Why ``name`` differs on ``x``, once randomness and batch dependence are ruled out
    (:func:`check_batch_independence` runs first): every item right in a batch of the traced
    size means the graph froze that size."""
    pairs = (torch.cat([x[i:i + 1]] * TRACE_BATCH) for i in range(x.shape[0]))
    if x.shape[0] != TRACE_BATCH and all(
            max_differences(eager, candidate, p, names)[name] <= tolerance for p in pairs):
        return (f"the export is right at the batch size it was traced at ({TRACE_BATCH}) "
                "only: a Python branch or value taken from x.shape was frozen into the graph")
    return ("the exported graph computes in another order or precision; if the difference is "
            f"acceptable, raise this output's tolerance (tolerances={{'{name}': ...}})")


def check_file(label: str, module: nn.Module, candidate: Runner, inputs: Sequence[Tensor],
               example: Tensor, names: Sequence[str], tolerances: Mapping[str, float]
               ) -> dict[str, float]:
    """Max difference per output over ``inputs``; :class:`ExportCheckError` at the first
    output beyond its tolerance."""
    eager = eager_runner(module)
    worst = dict.fromkeys(names, 0.0)
    for x in inputs:
        diffs = max_differences(eager, candidate, x, names)
        for name in names:
            worst[name] = max(worst[name], diffs[name])
            if not diffs[name] <= tolerances[name]:
                cause = likely_cause(candidate, eager, x, names, name, tolerances[name])
                raise ExportCheckError(
                    f"{label}: output {name!r} differs from eager PyTorch by "
                    f"{diffs[name]:.3g} (tolerance {tolerances[name]:g}) at batch size "
                    f"{x.shape[0]}; likely cause: {cause}")
    return worst


def check_batch_independence(label: str, module: nn.Module, inputs: Sequence[Tensor],
                             names: Sequence[str], tolerances: Mapping[str, float]) -> None:
    """:class:`ExportCheckError` when an item's eager answer changes with its batch: the
    server batches windows of different requests, so each must be answered on its own."""
    eager = eager_runner(module)
    for x in inputs:
        if x.shape[0] < 2:
            continue
        batched = eager(x)
        for name, a, b in zip(names, batched, eager(x)):
            if not torch.equal(a, b):
                raise ExportCheckError(
                    f"{label}: output {name!r} differs between two eager runs on the same "
                    "input: randomness left in eval mode (dropout called with training=True, "
                    "torch.rand in forward); the server must answer the same input the same")
        for i in (0, x.shape[0] - 1):
            alone = eager(x[i:i + 1])
            for name, a, b in zip(names, alone, batched):
                diff = difference(name, b[i:i + 1], a)
                if not diff <= tolerances[name]:
                    raise ExportCheckError(
                        f"{label}: output {name!r} of an item alone differs by {diff:.3g} from "
                        f"the same item in a batch of {x.shape[0]} (tolerance "
                        f"{tolerances[name]:g}), in eager PyTorch: the server batches windows "
                        "of different requests, so an answer must not depend on the rest of "
                        "its batch (statistics over the batch dimension, BatchNorm in "
                        "training mode)")
