"""Spectrogram bodies -> validated float32 [T, F] arrays (JSON and .npy).

Values are in the model's front-end units (natural-log mel power); nothing is rescaled.
"""

import io

import numpy as np
import orjson

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia


def spectrogram_from_json(data: bytes) -> np.ndarray:
    """``{"spectrogram": [[F floats], ... T rows]}`` -> [T, F] (not yet validated)."""
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
        return np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"spectrogram must contain only numbers: {exc}") from exc


def spectrogram_from_npy(data: bytes) -> np.ndarray:
    """A .npy file (no pickles) -> array (not yet validated)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UnsupportedMedia(f"body is not a readable .npy file: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise UnsupportedMedia("body must be a single .npy array, not an .npz archive")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InvalidInput(f"spectrogram dtype must be numeric, got {array.dtype}")
    return array.astype(np.float32, copy=False)


def validate_spectrogram(array: np.ndarray, n_mels: int, max_frames: int) -> np.ndarray:
    """Checks shape [T, n_mels] with T >= 1, T <= max_frames, and finiteness."""
    if array.ndim != 2:
        raise InvalidInput(f"spectrogram must be 2-D [T, F], got shape {list(array.shape)}")
    frames, bins = array.shape
    if frames == 0 or bins == 0:
        raise InvalidInput("spectrogram is empty")
    if bins != n_mels:
        raise InvalidInput(f"spectrogram has F={bins} bins; this model expects F={n_mels}")
    if frames > max_frames:
        raise PayloadTooLarge(f"spectrogram has {frames} frames; the limit is {max_frames}")
    if not np.all(np.isfinite(array)):
        raise InvalidInput("spectrogram contains NaN or Inf")
    return np.ascontiguousarray(array, dtype=np.float32)
