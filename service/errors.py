"""Domain errors of the serving stack.

Every error the service raises on purpose is a ``DiffresError`` with a stable machine
``code`` and a human ``message``. They carry no HTTP knowledge: the edge maps each class to a
status code in one table (``service.serving.http_errors``).
"""


class DiffresError(Exception):
    """Base of every deliberate error; ``code`` is stable and documented in docs/API.md."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Unauthorized(DiffresError):
    """No valid API key (or admin key) was presented. The message says nothing more."""

    code = "unauthorized"


class InvalidParameter(DiffresError):
    """A query parameter or request option is wrong (bad ``top_k``, unsupported operation)."""

    code = "invalid_parameter"


class ModelNotFound(DiffresError):
    """No such model, or no such version of it."""

    code = "model_not_found"


class PayloadTooLarge(DiffresError):
    """The body exceeds ``max_upload_bytes`` or the audio exceeds ``max_audio_seconds``."""

    code = "payload_too_large"


class UnsupportedMedia(DiffresError):
    """Unknown content type, or audio that no decoder understands."""

    code = "unsupported_media"


class InvalidInput(DiffresError):
    """Decodable input with unusable content: wrong F, NaN/Inf, empty, ragged rows."""

    code = "invalid_input"


class NotReady(DiffresError):
    """The service or the model cannot serve yet (loading, failed to load, draining)."""

    code = "not_ready"


class Overloaded(DiffresError):
    """The model's queue is full; try again after ``retry_after_s`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(DiffresError):
    """The request did not finish within ``request_timeout_s``."""

    code = "deadline_exceeded"


class ClientDisconnected(DiffresError):
    """The client went away before the answer was ready; its queued work was dropped."""

    code = "client_disconnected"


class InferenceFailed(DiffresError):
    """The backend raised or returned outputs of the wrong shape."""

    code = "inference_failed"
