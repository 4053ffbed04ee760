"""Hand-made bad inputs for tests/serving/http/test_bad_input.py: each case is (name, body,
[content type,] expected (status, code) or None for "any documented 4xx"). Every case
listed here must be refused with a 4xx; a 200 fails the test."""

import io

import numpy as np

from tests.serving.conftest import N_MELS, sine
from tests.serving.harness import wav_bytes, wav_header


def npy(array, **kw) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kw)
    return buffer.getvalue()


F32 = np.float32
AUDIO = [  # (name, body, content type, expected (status, code) or None: any documented 4xx)
    ("empty", b"", "audio/wav", (422, "invalid_input")),
    ("rate 0 Hz", wav_header(rate=0), "audio/wav", (415, "unsupported_media")),
    ("rate 4 GHz", wav_header(rate=4_000_000_000), "audio/wav", (415, "unsupported_media")),
    ("rate 500 Hz", wav_header(rate=500), "audio/wav", (422, "invalid_input")),
    ("rate 1 MHz", wav_header(rate=1_000_000), "audio/wav", (422, "invalid_input")),
    ("65535 channels", wav_header(channels=65535, data=b"\0" * 65535 * 4), "audio/wav",
     (415, "unsupported_media")),
    ("0 channels", wav_header(channels=0), "audio/wav", (415, "unsupported_media")),
    ("9 channels", wav_header(channels=9, data=b"\0" * 9 * 200), "audio/wav",
     (422, "invalid_input")),
    ("0 bits", wav_header(bits=0), "audio/wav", (415, "unsupported_media")),
    ("NaN float", wav_header(tag=3, bits=32, data=np.full(1600, np.nan, F32).tobytes()),
     "audio/wav", (422, "invalid_input")),
    ("Inf float", wav_header(tag=3, bits=32, data=np.array([np.inf, -np.inf] * 800, F32)
                             .tobytes()), "audio/wav", (422, "invalid_input")),
    ("1e300 double", wav_header(tag=3, bits=64, data=np.full(800, 1e300).tobytes()),
     "audio/wav", (422, "invalid_input")),
    ("loud 1e20 float", wav_header(tag=3, bits=32, data=(1e20 * sine(0.1)).astype(F32)
                                   .tobytes()), "audio/wav", (422, "invalid_input")),
    ("NaN in one stereo channel", wav_bytes(np.stack([sine(0.5), np.full(8000, np.nan, F32)],
                                                     axis=1), subtype="FLOAT"),
     "audio/wav", (422, "invalid_input")),
    ("header claims 4 GB", wav_header(data=b"\1\0" * 4000, data_size=0xFFFFFFF0), "audio/wav",
     (422, "truncated_audio")),
    ("header claims 36 h at 8 kHz", wav_header(rate=8000, data=b"\1\0" * 4000,
                                               data_size=0xFFFFFF00), "audio/wav",
     (422, "truncated_audio")),
    ("body one frame short", wav_bytes(sine(0.5))[:-2], "audio/wav", (422, "truncated_audio")),
    ("RF64 cut short", wav_bytes(sine(0.5), fmt="RF64")[:-100], "application/octet-stream",
     (422, "truncated_audio")),
    ("1 sample", wav_header(data=b"\1\0"), "audio/wav", (422, "audio_too_short")),
    ("399 samples", wav_header(data=b"\1\0" * 399), "audio/wav", (422, "audio_too_short")),
    ("100 samples at 8 kHz", wav_header(rate=8000, data=b"\1\0" * 100), "audio/wav",
     (422, "audio_too_short")),
    ("2 samples at 384 kHz", wav_header(rate=384_000, data=b"\1\0\1\0"), "audio/wav",
     (422, "invalid_input")),
    ("over max_audio_seconds", wav_bytes(np.zeros(8000 * 31, F32), 8000, fmt="FLAC"),
     "audio/flac", (413, "payload_too_large")),
    ("random bytes", np.random.default_rng(0).bytes(4096), "audio/mpeg",
     (415, "unsupported_media")),
    ("text as audio", b"hello world" * 10, "application/octet-stream",
     (415, "unsupported_media")),
    ("json as audio", b'{"spectrogram": [[0]]}', "audio/ogg", (415, "unsupported_media")),
    ("audio as json", wav_bytes(sine(0.5)), "application/json", (415, "unsupported_media")),
    ("audio as npy", wav_bytes(sine(0.5)), "application/x-npy", (415, "unsupported_media")),
    ("text/plain", b"1,2,3", "text/plain", (415, "unsupported_media")),
    ("no content type", b"1,2,3", None, (415, "unsupported_media")),
    ("multipart, no boundary", b"--x\r\n", "multipart/form-data", (400, "invalid_parameter")),
]

SPEC = [  # JSON and .npy spectrograms
    ("wrong F", {"spectrogram": [[0.0] * (N_MELS - 1)] * 3}, (422, "invalid_input")),
    ("F = 0", {"spectrogram": [[]]}, (422, "invalid_input")),
    ("empty", {"spectrogram": []}, (422, "invalid_input")),
    ("ragged", {"spectrogram": [[0.0] * N_MELS, [0.0] * 3]}, (422, "invalid_input")),
    ("strings", {"spectrogram": [["1.5"] * N_MELS]}, (422, "invalid_input")),
    ("booleans", {"spectrogram": [[True] * N_MELS]}, (422, "invalid_input")),
    ("nulls", {"spectrogram": [[None] * N_MELS]}, (422, "invalid_input")),
    ("3-D", {"spectrogram": [[[0.0]] * N_MELS]}, (422, "invalid_input")),
    ("not a list", {"spectrogram": "abc"}, (422, "invalid_input")),
    ("no key", {"wave": [1]}, (422, "invalid_input")),
    ("top-level list", [[0.0] * N_MELS], (422, "invalid_input")),
    ("float32 overflow", {"spectrogram": [[1e39] * N_MELS]}, (422, "invalid_input")),
    ("out of range", {"spectrogram": [[100.0] * N_MELS]}, (422, "invalid_input")),
    ("huge ints", {"spectrogram": [[10 ** 30] * N_MELS]}, (422, "invalid_input")),
]
RAW_JSON = [
    ("1e400", b'{"spectrogram": [[' + b",".join([b"1e400"] * N_MELS) + b"]]}",
     (415, "unsupported_media")),
    ("NaN literal", b'{"spectrogram": [[NaN]]}', (415, "unsupported_media")),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, (415, "unsupported_media")),
    ("truncated", b'{"spectrogram": [[0, 0', (415, "unsupported_media")),
    ("more values than the limit", b'{"spectrogram": [' + b",".join(
        [b"[" + b",".join([b"0"] * N_MELS) + b"]"] * 3100) + b"]}", (413, "payload_too_large")),
]


def npy_header(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                   "shape": shape})
    return buffer.getvalue()


NPY = [
    ("object (pickle)", npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
     (415, "unsupported_media")),
    ("10^7 frames claimed, short body", npy_header((10 ** 7, N_MELS)) + b"\0" * 64,
     (413, "payload_too_large")),
    ("10^12 values claimed", npy_header((10 ** 6, 10 ** 6)) + b"\0" * 64,
     (413, "payload_too_large")),
    ("size mismatch", npy(np.zeros((100, N_MELS), F32))[:-4], (415, "unsupported_media")),
    ("NaN", npy(np.full((5, N_MELS), np.nan, F32)), (422, "invalid_input")),
    ("Inf", npy(np.full((5, N_MELS), -np.inf, F32)), (422, "invalid_input")),
    ("0 frames", npy(np.zeros((0, N_MELS), F32)), (422, "invalid_input")),
    ("1-D", npy(np.zeros(N_MELS, F32)), (422, "invalid_input")),
    ("complex", npy(np.zeros((5, N_MELS), np.complex64)), (422, "invalid_input")),
    ("strings", npy(np.array([["a"] * N_MELS])), (422, "invalid_input")),
    ("structured", npy(np.zeros(5, dtype=[("a", F32), ("b", F32)])), (422, "invalid_input")),
    ("bad magic", b"\x93NUMPY\x09\x00garbage", (415, "unsupported_media")),
    ("truncated", npy(np.zeros((5, N_MELS), F32))[:20], (415, "unsupported_media")),
]


QUERIES = [("?model=nope", (404, "model_not_found")), ("?version=9", (404, "model_not_found")),
           ("?version=0", (400, "invalid_parameter")), ("?version=-1", (400, "invalid_parameter")),
           ("?version=abc", (400, "invalid_parameter")),
           ("?version=1e400", (400, "invalid_parameter")),
           ("?version=99999999999999999999999", (404, "model_not_found")),
           ("?top_k=0", (400, "invalid_parameter")), ("?top_k=100000", (400, "invalid_parameter")),
           ("?model=..%2F..%2Fetc%2Fpasswd", (404, "model_not_found")),
           ("?model=%2e%2e%2f", (404, "model_not_found")),
           ("?model=kws12-diffres&version=1&version=x", (400, "invalid_parameter"))]


NAMES = ["nope", "%2e%2e", "%2e%2e%2f%2e%2e%2fetc", "..%2F..%2Fetc%2Fpasswd", "a%2Fb",
         "kws12-diffres%00", "%252e%252e", "x" * 1000, "%F0%9F%92%A9"]
