"""The uploaded file of a multipart/form-data body, parsed on the feature thread pool.

Starlette's form parser runs on the event loop and spools each file part through a
temporary file with a thread hop per chunk; an upload is one small audio file, so here the
body is parsed in one pass by python-multipart's streaming parser, off the event loop, and
the file part is kept as bytes. Limits as before: one file, at most ``MAX_FIELDS`` fields.
"""

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import InvalidParameter

FILE_FIELD = "file"
MAX_FIELDS = 16


class _Parts:
    """python-multipart callbacks collecting (name, is_file, data) of every part."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bool, bytearray]] = []
        self._header = [b"", b""]
        self._disposition = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_part_data": self._data,
                "on_header_field": self._field, "on_header_value": self._value,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done}

    def _begin(self) -> None:
        self._disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidParameter('a multipart part has no Content-Disposition "name"')
        name = options[b"name"].decode("utf-8", "replace")
        self.parts.append((name, b"filename" in options, bytearray()))
        files = sum(is_file for _, is_file, _ in self.parts)
        if files > 1 or len(self.parts) - files > MAX_FIELDS:
            raise InvalidParameter(f"multipart body holds more than one file or more than "
                                   f"{MAX_FIELDS} fields")

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][2].extend(data[start:end])


def uploaded_file(body: bytes, content_type: str) -> bytes:
    """The bytes of the ``file`` field of a multipart/form-data ``body``."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidParameter("multipart/form-data body without a boundary")
    collected = _Parts()
    try:
        parser = MultipartParser(boundary, collected.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidParameter(f"invalid multipart/form-data body: {exc}") from exc
    for name, is_file, data in collected.parts:
        if name == FILE_FIELD and is_file:
            return bytes(data)
    raise InvalidParameter(f"multipart body needs a file field named '{FILE_FIELD}'")
