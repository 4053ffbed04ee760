"""Spectrogram bodies -> validated float32 [T, F] arrays (JSON and .npy), and the value range
every model input must respect.

Values are in the model's front-end units (natural-log mel power for ours; the manifest's
``frontend.value_range`` says what a model accepts); nothing is rescaled. Both
parsers refuse a body that holds more than ``max_values`` numbers before building the array:
JSON by counting separators, .npy by reading its header (whose declared size must also match
the body exactly: nothing is truncated or padded).
"""

import io
import math

import numpy as np
import orjson

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.manifest import LOG_MEL_RANGE

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def spectrogram_from_json(data: bytes, max_values: int | None = None) -> np.ndarray:
    """``{"spectrogram": [[F floats], ... T rows]}`` -> [T, F] (not yet validated)."""
    if max_values is not None and data.count(b",") >= max_values:
        raise PayloadTooLarge(f"spectrogram holds more than {max_values} values")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UnsupportedMedia(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or "spectrogram" not in doc:
        raise InvalidInput('JSON body must be an object {"spectrogram": [[...], ...]}')
    rows = doc["spectrogram"]
    if not isinstance(rows, list) or not rows:
        raise InvalidInput("spectrogram must be a non-empty list of rows")
    if not all(isinstance(row, list) for row in rows):
        raise InvalidInput("spectrogram rows must be lists of numbers")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise InvalidInput("spectrogram is ragged: rows have different lengths")
    try:
        array = np.asarray(rows)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"spectrogram must contain only numbers: {exc}") from exc
    if array.dtype.kind not in "iuf":  # booleans, strings, nulls, nested lists
        raise InvalidInput("spectrogram must contain only numbers")
    return array.astype(np.float32)


def spectrogram_from_npy(data: bytes, max_values: int | None = None) -> np.ndarray:
    """A .npy file (numeric dtype, no pickles) -> array (not yet validated)."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version not in _HEADER_READERS:
            raise ValueError(f"format version {version} is not supported")
        shape, fortran_order, dtype = _HEADER_READERS[version](buffer)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise UnsupportedMedia(f"body is not a readable .npy file: {exc}") from exc
    if dtype.hasobject:
        raise UnsupportedMedia(".npy holds Python objects (a pickle); only numeric arrays "
                               "are accepted")
    if dtype.kind not in "iuf":
        raise InvalidInput(f"spectrogram dtype must be numeric, got {dtype}")
    count = math.prod(shape)
    if max_values is not None and count > max_values:
        raise PayloadTooLarge(f"spectrogram of shape {list(shape)} holds more than "
                              f"{max_values} values")
    if count * dtype.itemsize != len(data) - buffer.tell():
        raise UnsupportedMedia(f".npy header declares {list(shape)} {dtype} "
                               f"({count * dtype.itemsize} bytes); the body holds "
                               f"{len(data) - buffer.tell()}")
    # The header is read and checked: view the data after it rather than parse it again.
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buffer.tell())
    return array.reshape(shape, order="F" if fortran_order else "C").astype(np.float32)


def validate_spectrogram(array: np.ndarray, n_mels: int, max_frames: int,
                         value_range: tuple[float, float] = LOG_MEL_RANGE) -> np.ndarray:
    """Checks shape [T, n_mels] with 1 <= T <= max_frames, finiteness and value range."""
    if array.ndim != 2:
        raise InvalidInput(f"spectrogram must be 2-D [T, F], got shape {list(array.shape)}")
    frames, bins = array.shape
    if frames == 0 or bins == 0:
        raise InvalidInput("spectrogram is empty")
    if bins != n_mels:
        raise InvalidInput(f"spectrogram has F={bins} bins; this model expects F={n_mels}")
    if frames > max_frames:
        raise PayloadTooLarge(f"spectrogram has {frames} frames; the limit is {max_frames}")
    # One pass each for min and max: NaN propagates through both, and Inf shows in one.
    extremes = np.array([array.min(), array.max()], dtype=np.float64)
    if not np.isfinite(extremes).all():
        raise InvalidInput("spectrogram contains NaN or Inf")
    _check_extremes(*extremes, "spectrogram", value_range)
    return np.ascontiguousarray(array, dtype=np.float32)


def check_range(log_mel: np.ndarray, source: str,
                value_range: tuple[float, float] = LOG_MEL_RANGE) -> None:
    """Refuse front-end values outside ``value_range`` (and NaN/Inf), from ``source``."""
    extremes = (float(log_mel.min()), float(log_mel.max())) if log_mel.size else (math.nan,) * 2
    _check_extremes(*extremes, source, value_range)


def _check_extremes(lowest: float, highest: float, source: str,
                    value_range: tuple[float, float]) -> None:
    low, high = value_range
    if low <= lowest and highest <= high:  # False for NaN
        return
    hint = " (samples should lie within [-1, 1])" if source == "audio" else (
        " (in the units of this model's front end)")
    raise InvalidInput(f"{source} level out of range: values must lie within "
                       f"[{low:g}, {high:g}]{hint}")
