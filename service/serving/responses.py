"""Response bodies: JSON via orjson (numpy arrays serialised natively) and .npz archives."""

import io
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.manifest import COMPRESSION_OUTPUTS

NPZ = "application/x-npz"


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def compress_npz(result: dict) -> bytes:
    """The /compress result as an .npz: per-window maps concatenated along time
    (split them with ``window_output_frames``), plus per-window times and activeness."""
    windows = result["windows"]
    arrays: dict[str, np.ndarray] = {
        "frame_scores": np.asarray(result["frame_scores"], np.float32),
        "activeness": np.asarray(result["activeness"], np.float32),
        "window_start_seconds": np.asarray([w["start_seconds"] for w in windows]),
        "window_end_seconds": np.asarray([w["end_seconds"] for w in windows]),
        "window_input_frames": np.asarray([w["input_frames"] for w in windows], np.int64),
        "window_output_frames": np.asarray([w["output_frames"] for w in windows], np.int64),
        "input_frames": np.asarray(result["input_frames"], np.int64),
        "output_frames": np.asarray(result["output_frames"], np.int64),
        "frame_hop_seconds": np.asarray(result["frame_hop_seconds"]),
    }
    for key in COMPRESSION_OUTPUTS:
        arrays[key] = np.concatenate([w[key] for w in windows]).astype(np.float32, copy=False)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
