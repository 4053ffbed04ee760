"""dataplane/form_upload.py: the ``file`` part of a multipart body, whole, and clear refusals
of bodies that do not hold exactly one."""

import httpx
import pytest

from service.errors import InvalidParameter
from service.serving.dataplane.form_upload import MAX_FIELDS, uploaded_file


def form(files: dict | None = None, data: dict | None = None) -> tuple[bytes, str]:
    """A multipart body as httpx (and so any HTTP client) encodes it, and its content type."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_the_file_part_comes_back_byte_for_byte():
    payload = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n"
    body, ctype = form(files={"file": ("a.wav", payload, "audio/wav")},
                       data={"note": "hello"})
    assert uploaded_file(body, ctype) == payload


@pytest.mark.parametrize("files,data,message", [
    ({"other": ("a.wav", b"x")}, None, "file field named 'file'"),
    ({"file": (None, b"not a file")}, None, "file field named 'file'"),
    ({"file": ("a.wav", b"x"), "file2": ("b.wav", b"y")}, None, "more than one file"),
    ({"file": ("a.wav", b"x")}, {f"f{i}": "v" for i in range(MAX_FIELDS + 1)},
     "more than one file or more than"),
])
def test_bodies_without_exactly_one_file_are_refused(files, data, message):
    body, ctype = form(files=files, data=data)
    with pytest.raises(InvalidParameter, match=message):
        uploaded_file(body, ctype)


def test_a_body_without_a_boundary_is_refused():
    with pytest.raises(InvalidParameter, match="boundary"):
        uploaded_file(b"--x\r\n", "multipart/form-data")


def test_a_malformed_body_is_refused_not_guessed():
    body, ctype = form(files={"file": ("a.wav", b"abc")})
    with pytest.raises(InvalidParameter):
        uploaded_file(body.replace(b"\r\n\r\n", b"\r\n", 1), ctype)
