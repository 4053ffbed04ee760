"""Export a trained model and its front end to a model directory the server can load.

``export_model_dir`` writes ``model.onnx`` / ``model.pt`` (ServingGraph: spectrogram ->
outputs), ``frontend.onnx`` / ``frontend.pt`` (LogMel: waveform -> log-mel) and
``manifest.json``, after checking every exported file against eager PyTorch on fresh
inputs at several batch sizes. Files are written to a temporary sibling directory and
moved into place only once all checks pass, so a model directory is complete or absent.
"""

import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from service.frontend import LogMel
from service.manifest import CompressorSpec, Manifest, TensorSpec, describe_artifact
from service.pipeline import AudioClassifier, ServingGraph

OPSET = 18
CHECK_BATCH_SIZES = (1, 3, 17)
TOLERANCE = 1e-4
MODEL_FILES = ("model.onnx", "model.pt", "frontend.onnx", "frontend.pt")

Runner = Callable[[Tensor], tuple[Tensor, ...]]


class ExportCheckError(RuntimeError):
    """An exported artifact disagrees with eager PyTorch beyond tolerance."""


def export_torchscript(module: nn.Module, example: Tensor, path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.script`` ``module`` (switched to eval mode), run it once on ``example``,
    save it to ``path``."""
    scripted = torch.jit.script(module.eval())
    with torch.no_grad():
        scripted(example)
    scripted.save(str(path))
    return scripted


def export_onnx(module: nn.Module, example: Tensor, path: Path, input_names: Sequence[str],
                output_names: Sequence[str],
                dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Export eager ``module`` (switched to eval mode) to a single-file ONNX model, opset 18.

    The TorchScript-based exporter goes first: it traces eager code with ``dynamic_axes``
    reliably. The dynamo exporter is the fallback, with the input's axes as
    ``dynamic_shapes``. Pass the eager module, not a scripted one: DiffRes takes its
    ONNX-friendly branch only when traced (``torch.onnx.is_in_onnx_export``).
    """
    module = module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # deprecation and tracer chatter
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                              do_constant_folding=True)
    except Exception as legacy_error:  # any failure: try the other exporter
        warnings.warn(f"legacy ONNX export failed ({legacy_error!r}); trying dynamo=True",
                      stacklevel=2)
        shape = {axis: torch.export.Dim.AUTO for axis in dynamic_axes.get(input_names[0], {})}
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_shapes=(shape,), external_data=False)
    with torch.no_grad():
        outputs = module(example)
    outputs = tuple(outputs) if isinstance(outputs, tuple | list) else (outputs,)
    model = onnx.load(str(path))
    declare_output_shapes(model, [tuple(o.shape) for o in outputs], dynamic_axes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def declare_output_shapes(model: onnx.ModelProto, shapes: Sequence[tuple[int, ...]],
                          dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Replace the exporter's shape hints by the eager output shapes (dynamic axes named).

    The TorchScript-based exporter wraps ``scatter_reduce`` in an ``If`` whose output it
    annotates as rank 1 (torch 2.13, symbolic_opset16.scatter_reduce); onnxruntime then
    rejects the model (a Concat of "rank 1" and rank 3 inputs). Hints are optional in
    ONNX, so we drop them all and state only the graph outputs, which we know exactly.
    """
    _drop_shape_hints(model.graph)
    for output, shape in zip(model.graph.output, shapes):
        axes = dynamic_axes.get(output.name, {})
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(shape):
            dim = dims.add()
            if axis in axes:
                dim.dim_param = axes[axis]
            else:
                dim.dim_value = size


def _drop_shape_hints(graph: onnx.GraphProto, subgraph: bool = False) -> None:
    del graph.value_info[:]
    if subgraph:  # a branch's outputs carry shapes too; keep only their element types
        for output in graph.output:
            output.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _drop_shape_hints(attribute.g, subgraph=True)
            for g in attribute.graphs:
                _drop_shape_hints(g, subgraph=True)


def onnx_runner(path: Path) -> Runner:
    """Run an ONNX file in onnxruntime (CPU) as a tensor -> tuple-of-tensors function."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: Tensor) -> tuple[Tensor, ...]:
        outputs = session.run(None, {input_name: x.detach().cpu().numpy()})
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)

    return run


def torchscript_runner(path: Path) -> Runner:
    """Load a TorchScript file (CPU) as a tensor -> tuple-of-tensors function."""
    loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = loaded(x.cpu())
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    return run


def max_differences(reference: Runner, candidate: Runner, inputs: Sequence[Tensor],
                    names: Sequence[str]) -> dict[str, float]:
    """Largest |candidate - reference| per output over ``inputs``; shape or NaN mismatches
    count as infinite."""
    worst = dict.fromkeys(names, 0.0)
    for x in inputs:
        expected, actual = reference(x), candidate(x)
        if len(actual) != len(names):
            raise ExportCheckError(f"expected {len(names)} outputs {list(names)}, "
                                   f"got {len(actual)}")
        for name, e, a in zip(names, expected, actual):
            e, a = e.detach().cpu().float(), a.detach().cpu().float()
            if e.shape != a.shape or not torch.equal(e.isnan(), a.isnan()):
                worst[name] = float("inf")
                continue
            diff = (e - a).abs().nan_to_num(0.0)
            worst[name] = max(worst[name], float(diff.max()) if diff.numel() else 0.0)
    return worst


def check_export(label: str, reference: Runner, candidate: Runner, inputs: Sequence[Tensor],
                 names: Sequence[str], checked: Sequence[str],
                 tolerance: float = TOLERANCE) -> dict[str, float]:
    """Raise :class:`ExportCheckError` when an output in ``checked`` differs by more than
    ``tolerance``; return all max differences (the unchecked ones for reporting)."""
    diffs = max_differences(reference, candidate, inputs, names)
    bad = {name: diffs[name] for name in checked if not diffs[name] <= tolerance}
    if bad:
        raise ExportCheckError(f"{label} differs from eager beyond {tolerance}: {bad} "
                               f"(all max diffs: {diffs})")
    return diffs


def eager_runner(module: nn.Module) -> Runner:
    def run(x: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(x)
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    return run


def noise_waveforms(batch: int, n_samples: int, generator: torch.Generator) -> Tensor:
    """[batch, n_samples] white noise at random levels (about -60 to 0 dBFS) with a stretch
    of digital silence in most items, so check inputs look like real log-mel input."""
    gain = 10.0 ** (-3.0 * torch.rand(batch, 1, generator=generator))
    wave = torch.randn(batch, n_samples, generator=generator) * gain
    for i in range(batch):
        if i % 4 != 3:  # some items have no silence at all
            length = int(torch.randint(1, max(n_samples // 3, 2), (1,), generator=generator))
            start = int(torch.randint(0, max(n_samples - length, 1), (1,), generator=generator))
            wave[i, start:start + length] = 0.0
    return wave


def check_inputs(frontend: LogMel, in_t_dim: int, batch_sizes: Sequence[int], seed: int
                 ) -> tuple[list[Tensor], list[Tensor]]:
    """(waveforms, spectrograms), one of each per batch size; spectrograms have exactly
    ``in_t_dim`` frames, waveform lengths vary (the front end's sample axis is dynamic)."""
    g = torch.Generator().manual_seed(seed)
    n_samples = (in_t_dim - 1) * frontend.hop_length
    with torch.no_grad():
        spectrograms = [frontend(noise_waveforms(b, n_samples, g)) for b in batch_sizes]
    waves = [noise_waveforms(b, n_samples + 37 * i + 1, g) for i, b in enumerate(batch_sizes)]
    return waves, spectrograms


def export_model_dir(model: AudioClassifier, frontend: LogMel, out_dir: Path, name: str,
                     version: int, labels: list[str], metrics: dict, dataset: dict,
                     training: dict) -> Manifest:
    """Export, verify and describe one model version in ``out_dir`` (must not hold files).

    Raises ExportCheckError when an exported file disagrees with eager PyTorch by more
    than 1e-4 on probabilities / frame_scores / log-mel; the max differences of every
    output are recorded under ``metrics["export_check"]``.
    """
    _check_compatible(model, frontend, labels)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already holds files; model versions are immutable")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
    try:
        graph = ServingGraph(model)
        fe = LogMel.from_spec(frontend.spec()).to("cpu").eval()
        graph = graph.to("cpu")
        # Trace at batch 2, check on other inputs at CHECK_BATCH_SIZES (fixed seeds, so a
        # failure reproduces).
        (wave_example,), (spec_example,) = check_inputs(fe, model.in_t_dim, (2,), seed=1)
        waves, spectrograms = check_inputs(fe, model.in_t_dim, CHECK_BATCH_SIZES, seed=0)
        report = {
            "model": _export_pair(graph, spec_example, spectrograms, staging, "model",
                                  ServingGraph.input_names, graph.output_names,
                                  ["probabilities", "frame_scores"]),
            "frontend": _export_pair(fe, wave_example, waves, staging, "frontend", ["waveform"],
                                     ["log_mel"], ["log_mel"], dynamic_samples=True),
        }
        manifest = _manifest(model, fe, graph, name, version, labels, staging,
                             {**metrics, "export_check": report}, dataset, training)
        manifest.write(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _check_compatible(model: AudioClassifier, frontend: LogMel, labels: list[str]) -> None:
    if frontend.n_mels != model.in_f_dim:
        raise ValueError(f"front end makes {frontend.n_mels} mel bins, model expects "
                         f"{model.in_f_dim}")
    if len(labels) != model.n_classes:
        raise ValueError(f"{len(labels)} labels for a model with {model.n_classes} classes")


def _export_pair(module: nn.Module, example: Tensor, inputs: list[Tensor], directory: Path,
                 stem: str, input_names: list[str], output_names: list[str],
                 checked: list[str], dynamic_samples: bool = False
                 ) -> dict[str, dict[str, float]]:
    """Write ``stem``.onnx and ``stem``.pt, check both against eager; max diffs per file."""
    axes = {input_names[0]: {0: "batch", 1: "samples"} if dynamic_samples else {0: "batch"}}
    for out in output_names:
        axes[out] = {0: "batch", 1: "frames"} if dynamic_samples else {0: "batch"}
    export_onnx(module, example, directory / f"{stem}.onnx", input_names, output_names, axes)
    export_torchscript(module, example, directory / f"{stem}.pt")
    eager = eager_runner(module)
    return {
        "onnx": check_export(f"{stem}.onnx", eager, onnx_runner(directory / f"{stem}.onnx"),
                             inputs, output_names, checked),
        "torchscript": check_export(f"{stem}.pt", eager,
                                    torchscript_runner(directory / f"{stem}.pt"),
                                    inputs, output_names, checked),
    }


def _manifest(model: AudioClassifier, frontend: LogMel, graph: ServingGraph, name: str,
              version: int, labels: list[str], directory: Path, metrics: dict,
              dataset: dict, training: dict) -> Manifest:
    t_in, f, t_out = model.in_t_dim, model.in_f_dim, model.out_t_dim
    shapes = {"probabilities": [-1, len(labels)], "frame_scores": [-1, t_in],
              "avgpool": [-1, t_out, f], "maxpool": [-1, t_out, f],
              "resolution_enc": [-1, t_out, f]}
    return Manifest(
        name=name, version=version, labels=list(labels), frontend=frontend.spec(),
        compressor=CompressorSpec(kind=model.kind, in_t_dim=t_in, in_f_dim=f,
                                  dimension_reduction_rate=model.dimension_reduction_rate,
                                  out_t_dim=t_out),
        inputs=[TensorSpec(name="spectrogram", shape=[-1, t_in, f])],
        outputs=[TensorSpec(name=n, shape=shapes[n]) for n in graph.output_names],
        frontend_inputs=[TensorSpec(name="waveform", shape=[-1, -1])],
        frontend_outputs=[TensorSpec(name="log_mel", shape=[-1, -1, frontend.n_mels])],
        artifacts={n: describe_artifact(directory / n) for n in MODEL_FILES},
        metrics=metrics, dataset=dataset, training=training,
    )

