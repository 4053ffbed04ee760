"""Open Inference Protocol (KServe v2 / Triton HTTP) codec: pure, no FastAPI, no I/O.

* ``decode_request``: an infer request body -> ``InferRequest`` (JSON tensor data and the
  binary tensor data extension);
* ``plan``: ``InferRequest`` + a model's manifest -> ``Plan`` (which input, which outputs);
* ``encode_response``: the data plane's arrays -> the response body;
* ``model_metadata`` / ``server_metadata``: the metadata documents.

Binary tensor data (Triton's ``binary_tensor_data`` extension): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw data of every input whose
``parameters`` hold ``binary_data_size``, in input order, row-major, little-endian. An
output is sent the same way when its ``binary_data`` parameter (default: the request's
``binary_data_output``) is true. Classification extension: ``"classification": k`` on
``probabilities`` gives a BYTES [B, k] tensor of ``"probability:index:label"``, best first.

Errors are the domain types of ``service.errors``: ``InvalidParameter`` for a malformed
request, ``UnsupportedMedia`` for an unknown Content-Encoding, ``PayloadTooLarge`` for a
body that inflates past the limit; the router renders them as ``{"error": "..."}``. Tensor
values (NaN/Inf, duration limits) are the data plane's to check.
"""

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMedia
from service.manifest import (
    FRAME_SCORES,
    PROBABILITIES,
    REQUIRED_OUTPUTS,
    SPECTROGRAM,
    WAVEFORM,
    Manifest,
)

FP32, BYTES = "FP32", "BYTES"
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
EXTENSIONS = ["binary_tensor_data", "classification", "parameters"]
CLIP_OUTPUTS = REQUIRED_OUTPUTS  # what a waveform input gives
HEADER_LENGTH = "inference-header-content-length"
_LE_F32 = np.dtype("<f4")
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class InputTensor:
    name: str
    shape: tuple[int, ...]
    data: np.ndarray  # float32, shaped
    parameters: dict[str, Any]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None (as requested only): the request's binary_data_output
    class_count: int = 0  # > 0: the classification extension (top class_count labels)


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output the input gives
    binary_output: bool  # request-level ``binary_data_output``: default of every output


@dataclass(frozen=True)
class Plan:
    kind: Literal["spectrogram", "waveform"]
    array: np.ndarray  # float32 [B, in_t_dim, n_mels] windows or [B, N] waveforms
    sample_rate: int | None  # of a waveform
    outputs: tuple[RequestedOutput, ...]


# ---- request --------------------------------------------------------------------------------

def decode_request(body: bytes, header_length: str | None = None,
                   content_encoding: str | None = None, max_bytes: int = 1 << 62
                   ) -> InferRequest:
    """Body (optionally gzip/deflate, inflated to at most ``max_bytes``) -> InferRequest."""
    body = _inflate(body, content_encoding, max_bytes)
    size = len(body) if header_length is None else _header_length(header_length, len(body))
    try:
        doc = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise InvalidParameter(f"request JSON is not valid: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidParameter("request must be a JSON object with 'inputs'")
    binary = memoryview(body)[size:]
    inputs, used = _inputs(doc.get("inputs"), binary)
    if used != len(binary):
        raise InvalidParameter(f"{len(binary) - used} bytes of binary data follow the JSON "
                               "header that no input's binary_data_size accounts for")
    parameters = _object(doc.get("parameters", {}), "request parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidParameter("request 'id' must be a string")
    binary_output = _bool(parameters.get("binary_data_output", False), "binary_data_output")
    return InferRequest(request_id, parameters, inputs, _outputs(doc.get("outputs")),
                        binary_output)


def _inflate(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMedia(f"unsupported Content-Encoding {encoding!r}; use gzip or "
                               "deflate")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidParameter(f"body is not valid {encoding} data: {exc}") from exc
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"{encoding} body inflates past the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise InvalidParameter(f"{encoding} body is truncated")
    return out


def _header_length(value: str, body_size: int) -> int:
    try:
        size = int(value)
    except ValueError:
        raise InvalidParameter(f"Inference-Header-Content-Length {value!r} is not an "
                               "integer") from None
    if not 0 < size <= body_size:
        raise InvalidParameter(f"Inference-Header-Content-Length {size} is not within the "
                               f"body of {body_size} bytes")
    return size


def _inputs(raw: Any, binary: memoryview) -> tuple[tuple[InputTensor, ...], int]:
    if not isinstance(raw, list) or not raw:
        raise InvalidParameter("request needs a non-empty 'inputs' list")
    inputs, offset = [], 0
    for item in raw:
        tensor, offset = _input(_object(item, "each input"), binary, offset)
        inputs.append(tensor)
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise InvalidParameter(f"inputs repeat a name: {names}")
    return tuple(inputs), offset


def _input(item: dict, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidParameter("every input needs a 'name'")
    shape = item.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise InvalidParameter(f"input {name!r}: 'shape' must be a non-empty list of "
                               f"non-negative integers, got {shape!r}")
    if item.get("datatype") != FP32:
        raise InvalidParameter(f"input {name!r}: datatype {item.get('datatype')!r} is not "
                               f"supported; send {FP32}")
    parameters = _object(item.get("parameters", {}), f"input {name!r} parameters")
    if any(key in parameters for key in _SHARED_MEMORY):
        raise InvalidParameter(f"input {name!r}: shared memory is not supported")
    count = math.prod(shape)
    if "binary_data_size" in parameters:
        if "data" in item:
            raise InvalidParameter(f"input {name!r} has both 'data' and binary_data_size")
        data, offset = _binary(name, parameters["binary_data_size"], count, binary, offset)
    elif "data" in item:
        data = _json_data(name, item["data"], count)
    else:
        raise InvalidParameter(f"input {name!r} has neither 'data' nor binary_data_size")
    return InputTensor(name, tuple(shape), data.reshape(shape), parameters), offset


def _binary(name: str, size: Any, count: int, binary: memoryview,
            offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidParameter(f"input {name!r}: binary_data_size must be an integer >= 0")
    if size != count * _LE_F32.itemsize:
        raise InvalidParameter(f"input {name!r}: binary_data_size {size} does not match "
                               f"its shape ({count} FP32 values = {count * 4} bytes)")
    if offset + size > len(binary):
        raise InvalidParameter(f"input {name!r}: binary data ends after {len(binary)} "
                               f"bytes, {offset + size} needed (is "
                               "Inference-Header-Content-Length set?)")
    data = np.frombuffer(binary, _LE_F32, count, offset).astype(np.float32)
    return data, offset + size


def _json_data(name: str, data: Any, count: int) -> np.ndarray:
    try:
        array = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidParameter(f"input {name!r}: 'data' is ragged: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise InvalidParameter(f"input {name!r}: 'data' must hold only numbers")
    if array.size != count:
        raise InvalidParameter(f"input {name!r}: 'data' has {array.size} values, its shape "
                               f"needs {count}")
    return array.astype(np.float32).ravel()


def _outputs(raw: Any) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidParameter("'outputs' must be a list")
    outputs = []
    for item in raw:
        item = _object(item, "each output")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidParameter("every requested output needs a 'name'")
        parameters = _object(item.get("parameters", {}), f"output {name!r} parameters")
        if any(key in parameters for key in _SHARED_MEMORY):
            raise InvalidParameter(f"output {name!r}: shared memory is not supported")
        binary = parameters.get("binary_data")
        count = parameters.get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidParameter(f"output {name!r}: classification must be an integer >= 0")
        outputs.append(RequestedOutput(
            name, None if binary is None else _bool(binary, "binary_data"), count))
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise InvalidParameter(f"outputs repeat a name: {names}")
    return tuple(outputs)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidParameter(f"{what} must be a JSON object")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameter(f"{what} must be true or false, got {value!r}")
    return value


# ---- the request against a model ------------------------------------------------------------

def plan(request: InferRequest, manifest: Manifest) -> Plan:
    """Which input the request gives (exactly one: ``spectrogram`` or ``waveform``), checked
    against the model's metadata, and which outputs to send back."""
    c = manifest.compressor
    usage = (f"model {manifest.name} takes one input: {SPECTROGRAM} {FP32} "
             f"[-1, {c.in_t_dim}, {c.in_f_dim}] or {WAVEFORM} {FP32} [-1, -1]")
    if len(request.inputs) != 1 or request.inputs[0].name not in (SPECTROGRAM, WAVEFORM):
        raise InvalidParameter(f"{usage}; got {[t.name for t in request.inputs]}")
    tensor = request.inputs[0]
    if tensor.name == SPECTROGRAM:
        if len(tensor.shape) != 3 or tensor.shape[1:] != (c.in_t_dim, c.in_f_dim):
            raise InvalidParameter(f"{SPECTROGRAM} has shape {list(tensor.shape)}; {usage}")
        sample_rate = None
    else:
        if len(tensor.shape) != 2:
            raise InvalidParameter(f"{WAVEFORM} has shape {list(tensor.shape)}; {usage}")
        sample_rate = tensor.parameters.get("sample_rate",
                                            request.parameters.get("sample_rate"))
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate < 1:
            raise InvalidParameter(f"{WAVEFORM} needs a 'sample_rate' parameter (a positive "
                                   f"integer, on the input or the request), got {sample_rate!r}")
    if 0 in tensor.shape:
        raise InvalidParameter(f"{tensor.name} is empty: shape {list(tensor.shape)}")
    return Plan(tensor.name, tensor.data, sample_rate, _requested(request, manifest,
                                                                   tensor.name))


def _requested(request: InferRequest, manifest: Manifest,
               kind: str) -> tuple[RequestedOutput, ...]:
    model_outputs = [o.name for o in manifest.outputs]
    available = [n for n in model_outputs if kind == SPECTROGRAM or n in CLIP_OUTPUTS]
    if request.outputs is None:
        return tuple(RequestedOutput(n, request.binary_output) for n in available)
    outputs = []
    for o in request.outputs:
        if o.name not in model_outputs:
            raise InvalidParameter(
                f"model {manifest.name}/{manifest.version} (compressor "
                f"{manifest.compressor.kind!r}) has no output {o.name!r}; outputs: "
                f"{model_outputs} (avgpool, maxpool and resolution_enc: DiffRes models only)")
        if o.name not in available:
            raise InvalidParameter(f"output {o.name!r} needs {SPECTROGRAM} windows; a "
                                   f"{WAVEFORM} gives {list(CLIP_OUTPUTS)}")
        if o.class_count and o.name != PROBABILITIES:
            raise InvalidParameter(f"classification applies to 'probabilities', not {o.name!r}")
        binary = request.binary_output if o.binary is None else o.binary
        outputs.append(RequestedOutput(o.name, binary, min(o.class_count, len(manifest.labels))))
    return tuple(outputs)


# ---- response -------------------------------------------------------------------------------

def encode_response(model: str, version: int, request_id: str | None,
                    outputs: tuple[RequestedOutput, ...], arrays: dict[str, np.ndarray],
                    labels: list[str]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is only JSON)."""
    entries, blobs = [], []
    for o in outputs:
        if o.class_count:
            strings = top_classes(arrays[o.name], labels, o.class_count)
            entry = {"name": o.name, "datatype": BYTES, "shape": [len(strings), o.class_count]}
            data: Any = [s for row in strings for s in row]
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in data))
        else:
            array = np.ascontiguousarray(arrays[o.name], _LE_F32)
            entry = {"name": o.name, "datatype": FP32, "shape": list(array.shape)}
            data, raw = array.ravel(), array.tobytes() if o.binary else b""
        if o.binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        entries.append(entry)
    doc = {"model_name": model, "model_version": str(version), "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def top_classes(probabilities: np.ndarray, labels: list[str], k: int) -> list[list[str]]:
    """[B, C] -> B rows of k strings "probability:index:label", best first (Triton's
    classification extension); binary form: each element a 4-byte little-endian length, then
    its UTF-8 bytes."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[f"{row[i]:f}:{i}:{labels[i]}" for i in idx]
            for row, idx in zip(probabilities, order, strict=True)]


# ---- metadata -------------------------------------------------------------------------------

def model_metadata(manifest: Manifest, backend: str, versions: list[int]) -> dict:
    """Inputs: ``spectrogram`` windows or ``waveform`` clips (send one of them). Output
    ``frame_scores`` is [-1, -1]: [B, in_t_dim] for windows, [B, T] for waveforms."""
    c = manifest.compressor
    outputs = [{"name": o.name, "datatype": FP32,
                "shape": [-1, -1] if o.name == FRAME_SCORES else list(o.shape)}
               for o in manifest.outputs]
    return {"name": manifest.name, "versions": [str(v) for v in sorted(versions)],
            "platform": PLATFORMS.get(backend, backend),
            "inputs": [{"name": SPECTROGRAM, "datatype": FP32,
                        "shape": [-1, c.in_t_dim, c.in_f_dim]},
                       {"name": WAVEFORM, "datatype": FP32, "shape": [-1, -1]}],
            "outputs": outputs}


def server_metadata(name: str, version: str) -> dict:
    return {"name": name, "version": version, "extensions": EXTENSIONS}


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
