"""Write one module to ONNX or TorchScript, and run the written file again.

Exporters are chatty (the dynamo fallback prints hundreds of lines of graph) and fail with
errors that name an operator but not where it sits. Here their output is captured into the
``service.export`` log, and a failure names the operator, the module that calls it, and
what to do next.
"""

import contextlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from service.errors import ExportError, UnsupportedOperator

OPSET = 18
log = logging.getLogger("service.export")
Runner = Callable[[Tensor], tuple[Tensor, ...]]

_ATEN_OP = re.compile(r"aten::([A-Za-z0-9_.]+)")


@contextlib.contextmanager
def captured_output(what: str) -> Iterator[None]:
    """Send everything written to stdout/stderr (Python and C++) and every warning inside
    to the ``service.export`` log at debug level, not the terminal."""
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        saved = [os.dup(1), os.dup(2)]
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
                yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines = text.count("\n") + len(seen)
            if lines:
                log.debug("%s: %d lines of exporter output:\n%s%s", what, lines, text,
                          "\n".join(str(w.message) for w in seen))


class _CallSites(TorchFunctionMode):
    """Which module first calls each torch function (the innermost module running). torch
    functions carry their aten operator's name (``torch.fft.rfft`` is ``fft_rfft``)."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.first: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "").strip("_")
        self.first.setdefault(name, self.stack[-1] if self.stack else "")
        return func(*args, **(kwargs or {}))


def operator_call_sites(module: nn.Module, example: Tensor) -> dict[str, str]:
    """Operator name -> qualified name of the module that first calls it, for
    ``module(example)`` in eager mode."""
    stack: list[str] = []

    def enter(label: str) -> Callable[..., None]:
        return lambda *_: stack.append(label)

    def leave(*_: object) -> None:  # a forward hook that returned something would replace
        stack.pop()                 # the module's output

    handles = []
    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(
            enter(f"{name or '<root>'} ({type(sub).__name__})")))
        handles.append(sub.register_forward_hook(leave))
    try:
        with torch.no_grad(), _CallSites(stack) as sites:
            module(example)
        return sites.first
    finally:
        for handle in handles:
            handle.remove()


def _unsupported(err: Exception, module: nn.Module, example: Tensor, what: str) -> ExportError:
    """Turn an exporter's error into one that names the operator and where it is called."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    match = _ATEN_OP.search(str(err))
    if match is None:
        return ExportError(f"{what}: {type(err).__name__}: {message}")
    op = match.group(1).split(".")[0]
    try:
        where = operator_call_sites(module, example).get(op)
    except Exception:  # the dry run is only for the message
        where = None
    place = f", called in {where}" if where else ""
    return UnsupportedOperator(
        f"{what}: operator aten::{op} has no export to ONNX opset {OPSET}{place}. Replace it "
        "with operators that export (docs/BRING_YOUR_OWN_MODEL.md lists common swaps), or "
        "export TorchScript only (--formats torchscript).")


def export_torchscript(module: nn.Module, example: Tensor, path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.script`` ``module`` (switched to eval mode), run it once on ``example``,
    save it to ``path``."""
    try:
        with captured_output(f"torch.jit.script({type(module).__name__})"):
            scripted = torch.jit.script(module.eval())
            with torch.no_grad():
                scripted(example)
    except Exception as err:
        first = str(err).strip().splitlines()
        raise ExportError(
            f"TorchScript cannot compile {type(module).__name__}: "
            f"{' '.join(first[:2]) if first else type(err).__name__}. Make the module "
            "scriptable (no *args, no super() calls in forward, typed arguments), or export "
            "ONNX only (--formats onnx).") from err
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
    what = f"ONNX export of {type(module).__name__}"
    try:
        with captured_output(what), torch.no_grad():
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                              do_constant_folding=True)
    except Exception as legacy_error:
        log.info("%s: the TorchScript-based exporter failed (%s); trying dynamo", what,
                 str(legacy_error).splitlines()[0] if str(legacy_error) else legacy_error)
        shape = {axis: torch.export.Dim.AUTO for axis in dynamic_axes.get(input_names[0], {})}
        try:
            with captured_output(f"{what} (dynamo)"):
                torch.onnx.export(module, (example,), str(path), dynamo=True,
                                  opset_version=OPSET, input_names=list(input_names),
                                  output_names=list(output_names), dynamic_shapes=(shape,),
                                  external_data=False)
        except Exception as dynamo_error:
            raise _unsupported(legacy_error, module, example, what) from dynamo_error
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


def eager_runner(module: nn.Module) -> Runner:
    def run(x: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(x)
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    return run


def write(backend: str, module: nn.Module, example: Tensor, path: Path,
          input_names: Sequence[str], output_names: Sequence[str],
          dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Write ``module`` as ``backend`` (a name of ``service.manifest.BACKENDS``) to ``path``."""
    if backend == "onnx":
        export_onnx(module, example, path, input_names, output_names, dynamic_axes)
    else:
        export_torchscript(module, example, path)


# Runners of each backend in the manifest's registry (service.manifest.BACKENDS).
RUNNERS: dict[str, Callable[[Path], Runner]] = {"onnx": onnx_runner,
                                                "torchscript": torchscript_runner}
