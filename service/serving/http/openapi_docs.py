"""OpenAPI documentation of the raw request bodies and of the answers, with examples.

The routes read the body themselves (four content types), so FastAPI cannot infer it.
"""

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}}}}}

BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {
        "schema": {"type": "object", "required": ["file"],
                   "properties": {"file": {"type": "string", "format": "binary",
                                           "description": "WAV, FLAC, OGG/Vorbis, Opus, MP3; "
                                           "any rate (resampled), any channels (averaged)"}}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"},
                "example": "(raw bytes of a .wav/.flac/.ogg/.mp3 file)"},
    "application/json": {
        "schema": {"type": "object", "required": ["spectrogram"], "properties": {
            "spectrogram": {"type": "array", "description": "T rows of F floats, natural-log "
                            "mel power as the model's front end makes it",
                            "items": {"type": "array", "items": {"type": "number"}}}}},
        "example": {"spectrogram": [[-13.8, -12.1, -9.7], [-13.8, -11.9, -9.2]]}},
    "application/x-npy": {"schema": {"type": "string", "format": "binary",
                                     "description": "numpy .npy of float [T, F]"}},
}}}

_ERRORS = {
    400: {"description": "bad query parameter, or /compress on a model without its outputs",
          "content": {"application/json": {"schema": _ERROR}}},
    404: {"description": "unknown model or version"},
    413: {"description": "body over max_upload_bytes or audio over max_audio_seconds"},
    415: {"description": "unsupported content type or undecodable audio"},
    422: {"description": "invalid spectrogram: wrong F, NaN/Inf, empty, ragged"},
    503: {"description": "queue full (Retry-After), model not ready, or shutting down"},
    504: {"description": "request_timeout_s passed"},
}

CLASSIFY_EXAMPLE = {
    "model": "kws12-diffres", "version": 1, "labels": ["yes", "no"],
    "probabilities": {"yes": 0.91, "no": 0.09},
    "top": [{"label": "yes", "probability": 0.91}, {"label": "no", "probability": 0.09}],
    "frame_scores": [0.42, 0.61, 0.38], "frame_hop_seconds": 0.01, "input_frames": 3,
    "duration_seconds": 0.03,
    "detections": [{"label": "yes", "probability": 0.91, "start": 0.0, "end": 0.03}],
    "windows": [{"start_seconds": 0.0, "end_seconds": 0.03,
                 "probabilities": {"yes": 0.91, "no": 0.09}}],
}
COMPRESS_EXAMPLE = {
    "model": "kws12-diffres", "version": 1, "input_frames": 3, "output_frames": 2,
    "frame_scores": [0.42, 0.61, 0.38], "frame_hop_seconds": 0.01, "duration_seconds": 0.03,
    "activeness": [0.12],
    "windows": [{"start_seconds": 0.0, "end_seconds": 0.03, "input_frames": 3,
                 "output_frames": 2, "activeness": 0.12,
                 "avgpool": [[-9.1, -8.7], [-9.4, -8.2]], "maxpool": [[-8.8, -8.1], [-9.0, -7.9]],
                 "resolution_enc": [[0.3, 0.9], [0.8, 0.5]]}],
}
CLASSIFY_RESPONSES = {200: {"content": {"application/json": {"example": CLASSIFY_EXAMPLE}}},
                      **_ERRORS}
COMPRESS_RESPONSES = {200: {"content": {"application/json": {"example": COMPRESS_EXAMPLE},
                                        "application/x-npz": {}}}, **_ERRORS}
VISUALIZE_RESPONSES = {200: {"description": "PNG, 1000 x 1100 px: log-mel, frame scores, the "
                             "compressed map on its learnt time axis, top classes (or "
                             "detections over time for long audio)",
                             "content": {"image/png": {"schema": {"type": "string",
                                                                  "format": "binary"}}}},
                       **_ERRORS}
