"""Export a front end, a compressor and a classifier, any ``nn.Module``s, to a model directory.

What the server needs to know is found by running them, not by reading attributes: a dry run
on the real check clip gives the front end's bands, hop and silence, the compressor's output
(a feature map, and perhaps frame scores and DiffRes's compressed maps) and the number of
classes. Each format asked for is written, then checked against the eager modules output by
output; the directory is written beside its final place and renamed into it only once every
check has passed, so a model directory is complete or absent.
"""

import copy
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from service.errors import InvalidModel
from service.export.checks import (
    CHECK_BATCH_SIZES,
    DEFAULT_TOLERANCES,
    TRACE_BATCH,
    check_batch_independence,
    check_file,
    check_waveforms,
)
from service.export.formats import RUNNERS, write
from service.frontend import LogMel
from service.manifest import (
    BACKENDS,
    COMPRESSION_OUTPUTS,
    FRAME_SCORES,
    FRONTEND_OUTPUT,
    LOG_MEL_RANGE,
    PROBABILITIES,
    SPECTROGRAM,
    WAVEFORM,
    CompressorSpec,
    FrontendInfo,
    Manifest,
    TensorSpec,
    describe_artifact,
)
from service.pipeline import FeatureOnly, ServingGraph, compressor_kind, serving_graph


@dataclass
class DryRun:
    """What running the modules once told us."""

    frontend: FrontendInfo
    in_t_dim: int
    out_t_dim: int
    rate: float
    kind: str
    keys: list[str]
    compressor: nn.Module
    n_classes: int


def export_model_dir(compressor: nn.Module, classifier: nn.Module, frontend: nn.Module,
                     out_dir: Path, name: str, version: int, labels: Sequence[str], *,
                     formats: Sequence[str] = tuple(BACKENDS), window_frames: int | None = None,
                     sample_rate: int | None = None, hop_length: int | None = None,
                     tolerances: Mapping[str, float] | None = None,
                     metrics: Mapping[str, Any] | None = None,
                     dataset: Mapping[str, Any] | None = None,
                     training: Mapping[str, Any] | None = None) -> Manifest:
    """Export, check and describe one model version in ``out_dir`` (must not hold files).

    ``frontend`` maps a waveform [B, N] to a spectrogram [B, T, F]; ``compressor`` maps a
    window [B, T, F] to a dict holding "feature" (and optionally "score" [B, T, 1] and
    "avgpool"/"maxpool"/"resolution_enc"), or to the feature tensor alone; ``classifier``
    maps the feature to logits [B, n_classes]. ``window_frames`` (T), ``sample_rate`` and
    ``hop_length`` are read from the modules' ``input_seq_length``, ``sample_rate`` and
    ``hop_length`` when not given. ``tolerances`` override ``DEFAULT_TOLERANCES`` per output.
    Raises :class:`~service.errors.ExportError` subclasses that say what to change.
    """
    formats = _formats(formats)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already holds files; model versions are immutable")
    frontend = copy.deepcopy(frontend).cpu().eval()
    compressor, classifier = (copy.deepcopy(m).cpu().eval() for m in (compressor, classifier))
    run = dry_run(compressor, classifier, frontend, window_frames, sample_rate, hop_length)
    if run.n_classes != len(labels):
        raise InvalidModel(f"the classifier gives {run.n_classes} logits, but {len(labels)} "
                           "labels were given: one label per class, in class order")
    graph = serving_graph(run.compressor, classifier, run.in_t_dim, run.out_t_dim, run.keys)
    limits = {**DEFAULT_TOLERANCES, **(tolerances or {})}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
    try:
        hop = run.frontend.hop_length
        wave_example, *waves = check_waveforms((TRACE_BATCH, *CHECK_BATCH_SIZES),
                                               (run.in_t_dim - 1) * hop, run.frontend.sample_rate,
                                               seed=0)
        with torch.no_grad():
            spectrograms = [frontend(w)[:, :run.in_t_dim] for w in (wave_example, *waves)]
        report = {
            "model": _export(graph, spectrograms[0], spectrograms[1:], staging, "model",
                             [SPECTROGRAM], graph.output_names, formats, limits),
            "frontend": _export(frontend, wave_example, waves, staging, "frontend", [WAVEFORM],
                                [FRONTEND_OUTPUT], formats, limits, dynamic_samples=True),
        }
        manifest = _manifest(run, graph, name, version, labels, staging, limits,
                             {**(metrics or {}), "export_check": report}, dataset, training)
        manifest.write(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _formats(formats: Sequence[str]) -> list[str]:
    chosen = [f.strip() for f in formats if f.strip()]
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown or not chosen:
        raise InvalidModel(f"formats must be one or more of {sorted(BACKENDS)}, got "
                           f"{list(formats)}")
    return sorted(set(chosen), key=list(BACKENDS).index)


def dry_run(compressor: nn.Module, classifier: nn.Module, frontend: nn.Module,
            window_frames: int | None, sample_rate: int | None, hop_length: int | None
            ) -> DryRun:
    """Run the three modules once on the real check clip and read off the contract."""
    info = frontend_info(frontend, sample_rate, hop_length)
    in_t = window_frames or getattr(compressor, "input_seq_length", None)
    if not isinstance(in_t, int) or in_t < 1:
        raise InvalidModel("the window length is unknown: pass window_frames (--window-frames)"
                           " or give the compressor an int input_seq_length")
    n_samples = (in_t - 1) * info.hop_length
    (wave,) = check_waveforms((1,), n_samples, info.sample_rate, seed=0)
    with torch.no_grad():
        window = frontend(wave)[:, :in_t]
        if window.shape[1] != in_t:
            raise InvalidModel(f"the front end makes {window.shape[1]} frames of {n_samples} "
                               f"samples; a window of {in_t} needs {in_t}")
        out = _call(compressor, window, "compressor",
                    f"a [1, {in_t}, {info.n_mels}] window from the front end")
        if isinstance(out, Tensor):
            compressor, out = FeatureOnly(compressor), {"feature": out}
        if not isinstance(out, dict) or not isinstance(out.get("feature"), Tensor):
            raise InvalidModel("the compressor must return the feature tensor, or a dict "
                               f"holding it under 'feature'; it returned {type(out).__name__}"
                               + (f" with keys {sorted(out)}" if isinstance(out, dict) else ""))
        keys = [k for k, v in out.items() if isinstance(v, Tensor)]
        _check_score(out, in_t)
        feature = out["feature"]
        logits = _call(classifier, feature, "classifier",
                       f"the compressor's feature of shape {list(feature.shape)}")
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
        raise InvalidModel("the classifier must return logits [B, n_classes]; it returned "
                           f"{list(logits.shape) if isinstance(logits, Tensor) else logits!r}")
    out_t = int(feature.shape[-2]) if feature.dim() >= 3 else in_t
    inner = compressor.compressor if isinstance(compressor, FeatureOnly) else compressor
    rate = getattr(inner, "dimension_reduction_rate", 1.0 - out_t / in_t)
    return DryRun(info, in_t, out_t, float(rate), compressor_kind(inner), keys, compressor,
                  int(logits.shape[1]))


def _call(module: nn.Module, x: Tensor, role: str, what: str) -> Any:
    try:
        return module(x)
    except Exception as err:
        raise InvalidModel(f"the {role} ({type(module).__name__}) fails on {what}: "
                           f"{type(err).__name__}: {err}") from err


def _check_score(out: dict[str, Tensor], in_t: int) -> None:
    score = out.get("score")
    if isinstance(score, Tensor) and list(score.shape) != [1, in_t, 1]:
        raise InvalidModel(f"the compressor's 'score' must be [B, {in_t}, 1] (one per frame); "
                           f"it is {list(score.shape)}")


def frontend_info(frontend: nn.Module, sample_rate: int | None, hop_length: int | None
                  ) -> FrontendInfo:
    """Describe any front end by running it: bands, hop (checked), silence, value range."""
    rate = sample_rate or getattr(frontend, "sample_rate", None)
    hop = hop_length or getattr(frontend, "hop_length", None)
    if not isinstance(rate, int) or not isinstance(hop, int):
        raise InvalidModel("the front end's sample rate and hop are unknown: pass sample_rate "
                           "and hop_length (--sample-rate, --hop-length) or give it int "
                           "sample_rate and hop_length attributes")
    base = max(8 * hop, int(getattr(frontend, "min_samples", 0)))  # reflect padding's minimum
    with torch.no_grad():
        one, two = (_call(frontend, torch.zeros(1, base + n * hop * 8), "front end",
                          f"a [1, {base + n * hop * 8}] waveform") for n in (0, 1))
        if not isinstance(one, Tensor) or one.dim() != 3:
            raise InvalidModel("the front end must return a spectrogram [B, T, F]; it returned "
                               f"{list(one.shape) if isinstance(one, Tensor) else one!r}")
        if two.shape[1] - one.shape[1] != 8:
            raise InvalidModel(f"the front end makes {two.shape[1] - one.shape[1]} more frames "
                               f"of {8 * hop} more samples: its hop is not {hop}")
        silence = one[0, one.shape[1] // 2]
        loud = frontend(torch.randn(1, rate, generator=torch.Generator().manual_seed(0)))
    describe = getattr(frontend, "describe", None)
    params = describe() if callable(describe) else {}
    if type(frontend) is LogMel:
        value_range = LOG_MEL_RANGE
    else:  # what it gives between digital silence and full-scale noise, with a wide margin
        low, high = float(torch.minimum(silence.min(), loud.min())), float(loud.max())
        margin = max(high - low, 1.0)
        value_range = (low - margin, high + margin)
    return FrontendInfo(type=type(frontend).__name__, sample_rate=rate, hop_length=hop,
                        n_mels=int(one.shape[2]), silence=[float(v) for v in silence],
                        value_range=value_range, params=params)


def _export(module: nn.Module, example: Tensor, inputs: list[Tensor], directory: Path,
            stem: str, input_names: list[str], output_names: list[str], formats: list[str],
            tolerances: Mapping[str, float], dynamic_samples: bool = False
            ) -> dict[str, dict[str, float]]:
    """Write ``stem`` in each format and check it against eager; max diffs per file."""
    axes = {input_names[0]: {0: "batch", 1: "samples"} if dynamic_samples else {0: "batch"}}
    for out in output_names:
        axes[out] = {0: "batch", 1: "frames"} if dynamic_samples else {0: "batch"}
    check_batch_independence(stem, module, inputs, output_names, tolerances)
    report = {}
    for fmt in formats:
        file = getattr(BACKENDS[fmt], stem)
        path = directory / file
        write(fmt, module, example, path, input_names, output_names, axes)
        report[fmt] = check_file(file, module, RUNNERS[fmt](path), inputs, example,
                                 output_names, tolerances)
    return report


def _manifest(run: DryRun, graph: ServingGraph, name: str, version: int,
              labels: Sequence[str], directory: Path, tolerances: Mapping[str, float],
              metrics: dict, dataset: Mapping[str, Any] | None,
              training: Mapping[str, Any] | None) -> Manifest:
    t_in, f, t_out = run.in_t_dim, run.frontend.n_mels, run.out_t_dim
    shapes = {PROBABILITIES: [-1, len(labels)], FRAME_SCORES: [-1, t_in],
              **{n: [-1, t_out, f] for n in COMPRESSION_OUTPUTS}}
    return Manifest(
        name=name, version=version, labels=list(labels), frontend=run.frontend,
        compressor=CompressorSpec(kind=run.kind, in_t_dim=t_in, in_f_dim=f,
                                  dimension_reduction_rate=run.rate, out_t_dim=t_out),
        inputs=[TensorSpec(name=SPECTROGRAM, shape=[-1, t_in, f])],
        outputs=[TensorSpec(name=n, shape=shapes[n], tolerance=tolerances[n])
                 for n in graph.output_names],
        frontend_inputs=[TensorSpec(name=WAVEFORM, shape=[-1, -1])],
        frontend_outputs=[TensorSpec(name=FRONTEND_OUTPUT, shape=[-1, -1, f],
                                     tolerance=tolerances[FRONTEND_OUTPUT])],
        artifacts={p.name: describe_artifact(p) for p in sorted(directory.iterdir())},
        metrics=metrics, dataset=dict(dataset or {}), training=dict(training or {}),
    )
