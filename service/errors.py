"""Domain errors of the service and of its exporter.

Every error raised on purpose is a ``DiffresError`` with a stable machine ``code`` and a
human ``message``. They carry no HTTP knowledge: the edge maps each serving error to a status
code in one table (``service.serving.http.error_mapping``). ``ExportError`` and its subclasses are
the offline exporter's (``service.export``) and never reach a request.
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


class ConfigError(DiffresError):
    """The settings do not fit the model store (e.g. ``default_model`` is not in it). Raised
    at startup, which then fails; never an HTTP answer."""

    code = "config_error"


class PayloadTooLarge(DiffresError):
    """The body exceeds ``max_upload_bytes`` or the audio exceeds ``max_audio_seconds``."""

    code = "payload_too_large"


class UnsupportedMedia(DiffresError):
    """Unknown content type, or audio that no decoder understands."""

    code = "unsupported_media"


class InvalidInput(DiffresError):
    """Decodable input with unusable content: wrong F, NaN/Inf, empty, ragged rows."""

    code = "invalid_input"


class AudioTooShort(InvalidInput):
    """Audio (at the model's sample rate) shorter than one analysis frame of its front end."""

    code = "audio_too_short"


class TruncatedAudio(InvalidInput):
    """Audio whose header declares more sample data than the body holds (a cut-off upload)."""

    code = "truncated_audio"


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


class ExportError(DiffresError):
    """A model could not be exported to a model directory; the message says what to change."""

    code = "export_failed"


class InvalidModel(ExportError):
    """The modules handed to the exporter do not fit together (labels, shapes, outputs)."""

    code = "invalid_model"


class UnsupportedOperator(ExportError):
    """An operator in the model has no export to the requested format."""

    code = "unsupported_operator"


class ExportCheckError(ExportError):
    """An exported file disagrees with eager PyTorch beyond an output's tolerance."""

    code = "export_check_failed"
