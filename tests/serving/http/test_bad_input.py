"""Bad input against a live server (``python -m service serve`` in a subprocess), through
HTTP, on /classify, /compress, /models/{name} and (when present) the v2 infer route.

Table-driven cases (hand-made headers, truncations, limits, content types, names) and
Hypothesis-driven ones (random bytes, mutated real files, fuzzed WAV headers, JSON and
.npy). Every answer must be a 200 with finite numbers or a 4xx JSON error whose code is in
docs/API.md; never a 5xx. After every test, in whatever order they run, the server must be
up, its /metrics must count no 5xx, and its RSS must stay bounded; the module's end prints
how many cases were tried.
"""

import json
import math
import os
import re
import struct
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.bad_inputs import AUDIO, NAMES, NPY, QUERIES, RAW_JSON, SPEC, npy
from tests.serving.conftest import N_MELS, sine
from tests.serving.harness import LiveServer, metric_samples, raw_http, wav_bytes, wav_header

ROOT = Path(__file__).resolve().parents[3]
LIMIT = 2_000_000  # max_upload_bytes of the server under test
MAX_S = 30.0  # max_audio_seconds
DOCUMENTED = set(re.findall(r"^\| 4\d\d \| `([a-z_]+)` \|", (ROOT / "docs" / "API.md")
                            .read_text(), re.M))
FUZZ = settings(max_examples=int(os.environ.get("DIFFRES_FUZZ_EXAMPLES", "60")), deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
TALLY = Counter()
ENDPOINTS = ["/classify", "/compress"]


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory, request):
    log = tmp_path_factory.mktemp("bad_input") / "server.log"
    srv = LiveServer(model_store, log, models="kws12-diffres,kws12-avgpool",
                     max_upload_bytes=LIMIT, max_audio_seconds=MAX_S, request_timeout_s=10,
                     intra_op_threads=1).wait_ready()
    with httpx.Client(base_url=srv.base, timeout=30) as client:
        for _ in range(3):  # warm every path before the memory baseline
            for body, ctype in [(wav_bytes(sine(2.0)), "audio/wav"),
                                (wav_bytes(sine(2.0), fmt="FLAC"), "audio/flac"),
                                (npy(np.zeros((150, N_MELS), np.float32)), "application/x-npy")]:
                for url in ENDPOINTS:
                    assert client.post(url, content=body,
                                       headers={"content-type": ctype}).status_code == 200
        srv.client, srv.rss_before = client, srv.rss()
        yield srv
        rss_after = srv.rss() if srv.proc.poll() is None else float("nan")
    srv.stop()
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\nbad input: {TALLY['cases']} cases tried ({TALLY[200]} answered 200, "
              f"{TALLY[400]} 4xx, {TALLY[500]} 5xx); RSS {srv.rss_before / 2 ** 20:.0f} -> "
              f"{rss_after / 2 ** 20:.0f} MiB (+{(rss_after - srv.rss_before) / 2 ** 20:.1f} MiB)")


@pytest.fixture(autouse=True)
def server_survives(server):
    """Checked after every test rather than by a "last" test, which a random test order
    would run anywhere: the server is up, /metrics counts no 5xx (/readyz during start-up
    aside), and its RSS stays within 64 MiB of the warmed-up baseline."""
    yield
    assert server.proc.poll() is None, server.log()[-3000:]
    assert server.client.get("/healthz").status_code == 200
    metrics = server.client.get("/metrics").text
    five = [(labels, v) for labels, v in metric_samples(metrics, "diffres_requests_total")
            if re.search(r'status="5\d\d"', labels) and "/readyz" not in labels and v > 0]
    assert not five, five
    assert server.rss() - server.rss_before < 64 * 2 ** 20


@pytest.fixture(scope="module")
def v2(server):
    if "/v2/models/{name}/infer" not in server.client.get("/openapi.json").json()["paths"]:
        pytest.skip("no v2 routes in this build")


def check(r: httpx.Response, expect: tuple[int, str] | None = None, v2: bool = False,
          refused: bool = False) -> None:
    """One case: 200 with finite numbers, or a documented 4xx JSON error. A listed bad input
    (an ``expect``ed answer, or ``refused``) must be a 4xx: a 200 fails."""
    TALLY["cases"] += 1
    TALLY[r.status_code // 100 * 100] += 1
    assert r.status_code < 500, r.text[:500]
    assert not (r.status_code == 200 and (refused or expect is not None)), \
        f"a bad input was answered 200: {r.text[:300]}"
    if r.status_code == 200:
        if r.headers.get("content-type", "").startswith("application/json"):
            assert_finite(r.json())
        return
    body = r.json()
    if v2:
        assert isinstance(body["error"], str) and 400 <= r.status_code < 500
        return
    code = body["error"]["code"]
    assert code in DOCUMENTED and body["error"]["message"], body
    if expect is not None:
        assert (r.status_code, code) == expect, body


def assert_finite(value) -> None:
    """No NaN reached a result (orjson would have written it as null)."""
    if isinstance(value, dict):
        for v in value.values():
            assert_finite(v)
    elif isinstance(value, list):
        for v in value:
            assert_finite(v)
    else:
        assert value is not None and (not isinstance(value, float) or math.isfinite(value))


def post(server, url, content=None, ctype="audio/wav", **kw):
    headers = kw.pop("headers", {}) | ({"content-type": ctype} if ctype else {})
    return server.client.post(url, content=content, headers=headers, **kw)


# -- table-driven ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize("name,body,ctype,expect", AUDIO, ids=[c[0] for c in AUDIO])
def test_audio_table(server, url, name, body, ctype, expect):
    check(post(server, url, body, ctype), expect, refused=True)


@pytest.mark.parametrize("url", ENDPOINTS)
def test_streamed_wavs_of_unknown_length_are_classified(server, url):
    """ffmpeg (and most tools) writing a WAV to a pipe leave its sizes at 0xFFFFFFFF: not a
    truncation. Neither is an Ogg file, which declares no size."""
    data = (0.1 * sine(0.5) * 32767).astype("<i2").tobytes()
    streamed = wav_header(data=data, data_size=0xFFFFFFFF)
    streamed = streamed[:4] + struct.pack("<I", 0xFFFFFFFF) + streamed[8:]
    for body in (streamed, wav_bytes(sine(0.5), fmt="OGG", subtype="VORBIS")):
        r = post(server, url, body, "application/octet-stream")
        check(r)
        assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_spectrogram_tables(server, url):
    for _name, doc, expect in SPEC:
        check(server.client.post(url, json=doc), expect)
    for _name, raw, expect in RAW_JSON:
        check(post(server, url, raw, "application/json"), expect)
    for _name, raw, expect in NPY:
        check(post(server, url, raw, "application/x-npy"), expect)


@pytest.mark.parametrize("url", ENDPOINTS)
def test_truncated_and_corrupted_real_files(server, url):
    rng = np.random.default_rng(1)
    for fmt, subtype in [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                         ("MP3", "MPEG_LAYER_III")]:
        good = wav_bytes(sine(1.0), fmt=fmt, subtype=subtype)
        for cut in (4, 12, 44, 100, len(good) // 2, len(good) - 1):
            check(post(server, url, good[:cut], "application/octet-stream"))
        for start in (0, 8, 20, 36, len(good) // 3):
            bad = bytearray(good)
            bad[start:start + 32] = rng.bytes(len(bad[start:start + 32]))
            check(post(server, url, bytes(bad), "application/octet-stream"))


@pytest.mark.parametrize("url", ENDPOINTS)
def test_multipart_and_size_limits(server, url):
    good = wav_bytes(sine(0.5))
    check(server.client.post(url, files={"other": ("a.wav", good, "audio/wav")}),
          (400, "invalid_parameter"))
    check(server.client.post(url, files={"file": ("a.wav", good, "audio/wav"),
                                         "file2": ("b.wav", good, "audio/wav")}),
          (400, "invalid_parameter"))
    check(server.client.post(url, data={"file": "not a file"},
                             files={"other": ("a.wav", good, "audio/wav")}),
          (400, "invalid_parameter"))
    big = b"\0" * (LIMIT + 1)
    check(post(server, url, big), (413, "payload_too_large"))  # Content-Length
    check(post(server, url, iter([big[i:i + 65536] for i in range(0, len(big), 65536)])),
          (413, "payload_too_large"))  # chunked, no Content-Length
    check(server.client.post(url, files={"file": ("a.wav", big, "audio/wav")}),
          (413, "payload_too_large"))
    rows = (b"[" + b",".join([b"-8.0"] * N_MELS) + b"],") * 4000

    def frames():  # 10^7 frames of JSON, streamed: refused once LIMIT bytes have arrived
        yield b'{"spectrogram": ['
        for _ in range(LIMIT // len(rows) + 2):
            yield rows

    check(post(server, url, frames(), "application/json"), (413, "payload_too_large"))


def test_declared_huge_bodies_are_refused_before_reading(server):
    for length in (10 ** 10, 10 ** 7 * N_MELS * 8, LIMIT + 1):
        status, body = raw_http(server.port, (
            f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
            + b'{"spectrogram": [[')
        TALLY["cases"] += 1
        TALLY[status // 100 * 100] += 1
        assert status == 413 and b"payload_too_large" in body, (status, body)


@pytest.mark.parametrize("query,expect", QUERIES)
def test_bad_queries(server, query, expect):
    check(server.client.post(f"/classify{query}", json={"spectrogram": [[-8.0] * N_MELS]}),
          expect)


def test_compress_on_a_model_without_maps_and_wrong_method(server):
    check(server.client.post("/compress?model=kws12-avgpool",
                             json={"spectrogram": [[-8.0] * N_MELS]}),
          (400, "compress_unsupported"))
    check(server.client.get("/classify"), (405, "method_not_allowed"))


@pytest.mark.parametrize("name", NAMES)
def test_model_names(server, name):
    check(server.client.get(f"/models/{name}"))
    assert server.client.get(f"/models/{name}").status_code == 404


@pytest.mark.parametrize("path", ["/models/../models", "/models/..", "/models/%2e%2e/%2e%2e/etc",
                                  "/models/kws12-diffres/../../etc/passwd",
                                  "/../../etc/passwd", "/classify/../admin/reload"])
def test_raw_traversal_paths(server, path):
    status, body = raw_http(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                         "Connection: close\r\n\r\n".encode())
    TALLY["cases"] += 1
    TALLY[status // 100 * 100] += 1
    assert status in (404, 405) and b'"code"' in body, (path, status, body)


# -- Hypothesis-driven ----------------------------------------------------------------------

CTYPES = ["audio/wav", "audio/mpeg", "audio/flac", "application/ogg",
          "application/octet-stream", "application/json", "application/x-npy", "text/plain",
          "multipart/form-data; boundary=x", None]


@FUZZ
@given(body=st.binary(max_size=4096), ctype=st.sampled_from(CTYPES),
       url=st.sampled_from(ENDPOINTS))
def test_fuzz_random_bytes(server, body, ctype, url):
    check(post(server, url, body, ctype))


_FILES = {fmt: wav_bytes(sine(0.5), fmt=fmt, subtype=sub) for fmt, sub in
          [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]}


@FUZZ
@given(fmt=st.sampled_from(sorted(_FILES)), data=st.data(), url=st.sampled_from(ENDPOINTS))
def test_fuzz_mutated_real_files(server, fmt, data, url):
    raw = bytearray(_FILES[fmt])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=16))
        raw[at:at + len(patch)] = patch
    cut = data.draw(st.integers(1, len(raw)))
    check(post(server, url, bytes(raw[:cut]), "application/octet-stream"))


@FUZZ
@given(rate=st.one_of(st.integers(0, 2 ** 32 - 1), st.sampled_from([1, 8000, 16000, 384_001])),
       channels=st.integers(0, 70000), bits=st.sampled_from([0, 1, 7, 8, 16, 24, 32, 64, 65]),
       tag=st.sampled_from([1, 3, 0, 2, 0xFFFE, 0x55]), size=st.integers(0, 2 ** 32 - 1),
       data=st.one_of(st.binary(max_size=2048), st.lists(
           st.floats(width=32), max_size=256).map(lambda v: np.asarray(v, np.float32).tobytes())),
       url=st.sampled_from(ENDPOINTS))
def test_fuzz_wav_headers(server, rate, channels, bits, tag, size, data, url):
    check(post(server, url, wav_header(rate, channels, bits, tag, data, size)))


_NUMBER = st.one_of(st.floats(allow_nan=False), st.integers(-(2 ** 70), 2 ** 70),
                    st.floats(-20, 20))
_JSON = st.recursive(st.none() | st.booleans() | _NUMBER | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=3),
                     max_leaves=30)


@FUZZ
@given(doc=st.one_of(
    st.fixed_dictionaries({"spectrogram": _JSON}),
    st.fixed_dictionaries({"spectrogram": st.lists(st.lists(_NUMBER, min_size=N_MELS - 1,
                                                            max_size=N_MELS + 1),
                                                   min_size=1, max_size=4)}),
    _JSON), url=st.sampled_from(ENDPOINTS))
def test_fuzz_json(server, doc, url):
    check(post(server, url, json.dumps(doc).encode(), "application/json"))


@FUZZ
@given(dtype=st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i4", "|u1", "<c8", "|b1", "<U2",
                              "|S3", "<m8[s]"]),
       shape=st.lists(st.integers(0, 50), min_size=0, max_size=3).map(tuple),
       fill=st.sampled_from([0.0, -8.0, np.nan, np.inf, 1e30, 60.0]),
       chop=st.integers(0, 8), url=st.sampled_from(ENDPOINTS))
def test_fuzz_npy(server, dtype, shape, fill, chop, url):
    array = np.zeros(shape, dtype=dtype)
    if array.dtype.kind in "fc":
        array[...] = fill
    raw = npy(array)
    check(post(server, url, raw[:len(raw) - chop], "application/x-npy"))


@FUZZ
@given(model=st.text(max_size=40), version=st.text(max_size=12), top_k=st.text(max_size=8))
def test_fuzz_query_parameters(server, model, version, top_k):
    params = {"model": model, "version": version, "top_k": top_k}
    check(server.client.post("/classify", params=params,
                             json={"spectrogram": [[-8.0] * N_MELS] * 3}))


@FUZZ
@given(body=st.one_of(st.binary(max_size=2048),
                     _JSON.map(lambda d: json.dumps({"inputs": d}).encode())),
       header=st.one_of(st.none(), st.integers(-5, 5000).map(str),
                        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=6)))
def test_fuzz_v2_infer(server, v2, body, header):
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["inference-header-content-length"] = header
    check(server.client.post("/v2/models/kws12-diffres/infer", content=body, headers=headers),
          v2=True)


def test_v2_table(server, v2):
    url = "/v2/models/kws12-diffres/infer"
    spec = np.zeros((1, 101, N_MELS), np.float32)
    cases = [
        {"inputs": [{"name": "spectrogram", "datatype": "FP32", "shape": [1, 101, N_MELS],
                     "data": [float("nan")] * 10}]},
        {"inputs": [{"name": "spectrogram", "datatype": "FP32", "shape": [10 ** 7, 101, N_MELS],
                     "data": [0.0]}]},
        {"inputs": [{"name": "spectrogram", "datatype": "FP32", "shape": [1, 101, N_MELS],
                     "data": (spec + 1e3).ravel().tolist()}]},
        {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 16000],
                     "data": [1e30] * 16000}], "parameters": {"sample_rate": 16000}},
        {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 4],
                     "data": [0.0] * 4}], "parameters": {"sample_rate": 4_000_000_000}},
        {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": [1, 1],  # < 1 frame
                     "data": [0.5]}], "parameters": {"sample_rate": 16000}},
        {"inputs": "x"}, {"inputs": []}, [],
    ]
    for case in cases:  # stdlib json: NaN goes out as the (invalid) literal NaN
        check(post(server, url, json.dumps(case).encode(), "application/json"), v2=True,
              refused=True)
    for name in ("nope", "%2e%2e", "..%2F..%2Fetc"):
        check(server.client.post(f"/v2/models/{name}/infer", json=cases[-1]), v2=True)
    header = struct.pack("<I", 0)
    check(server.client.post(url, content=header, headers={
        "inference-header-content-length": "999999999"}), v2=True)
