"""The one settings object of the service: environment variables ``DIFFRES_*`` or CLI flags.

``Settings()`` reads the environment; the CLI passes its flags as keyword arguments, which
win over the environment. Code receives a ``Settings`` instance; nothing else reads the
environment. ``get_settings()`` is the cached getter ``create_app`` falls back on; routes get
the app's instance from ``app.state``.
"""

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MB = 1024 * 1024
CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass(frozen=True, repr=False)
class VersionPolicy:
    """Which versions of each model are served (Triton's ``version_policy``):

    * ``latest``: only the newest version that loads (an older one takes over if it fails);
    * ``all``: every version in the store;
    * ``specific:1,3``: only those versions (each that is present and loads).

    Written and read as that text (``str(policy)``, ``VersionPolicy.parse(text)``).
    """

    kind: Literal["latest", "all", "specific"] = "latest"
    versions: tuple[int, ...] = ()

    SYNTAX = "'latest', 'all' or 'specific:<version>[,<version>...]' (positive integers)"

    @classmethod
    def parse(cls, value: Any) -> "VersionPolicy":
        if isinstance(value, VersionPolicy):
            return value
        if not isinstance(value, str):
            raise ValueError(f"version_policy must be {cls.SYNTAX}, got {value!r}")
        text = value.strip().lower()
        if text in ("latest", "all"):
            return cls(text)
        kind, colon, listed = text.partition(":")
        parts = [p.strip() for p in listed.split(",")]
        if kind.strip() != "specific" or not colon or not all(p.isdigit() and int(p) > 0
                                                             for p in parts):
            raise ValueError(f"version_policy must be {cls.SYNTAX}, got {value!r}")
        return cls("specific", tuple(sorted({int(p) for p in parts})))

    def __repr__(self) -> str:
        return f"VersionPolicy({str(self)!r})"

    def __str__(self) -> str:
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return self.kind

    def wants(self, version: int) -> bool:
        """Whether ``version`` may be served (under ``latest``: whether it is a candidate)."""
        return version > 0 and (self.kind != "specific" or version in self.versions)

    def served_count(self, loadable: list[int]) -> int:
        """How many of one model's ``loadable`` versions will serve: what the thread plan
        divides the cores by."""
        wanted = [v for v in loadable if self.wants(v)]
        return min(len(wanted), 1) if self.kind == "latest" else len(wanted)


VersionPolicySetting = Annotated[VersionPolicy, NoDecode, BeforeValidator(VersionPolicy.parse),
                                 PlainSerializer(str, return_type=str)]


class Settings(BaseSettings):
    """Every knob of ``python -m service serve``; see the settings table in docs/API.md."""

    model_config = SettingsConfigDict(env_prefix="DIFFRES_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    processes: int = Field(1, ge=0, description="serving processes sharing the port, each "
                           "with its own event loop, batchers and workers; 0: one per core")
    model_store: Path = Path("model_store")
    models: CommaList = Field(default_factory=list, description="models to load; empty: all")
    default_model: str = Field("kws12-diffres", description="model used when a request "
                               "names none; startup fails if the store does not hold it")
    version_policy: VersionPolicySetting = Field(
        VersionPolicy(), description="versions served per model: latest (the newest that "
        "loads), all, or specific:1,3")
    backend: Literal["onnx", "torchscript"] = "onnx"
    onnx_providers: CommaList = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime providers in order of preference (unavailable ones skipped)",
    )
    devices: CommaList = Field(default_factory=lambda: ["auto"],
                               description="'auto' (every visible GPU, else cpu), or cpu,cuda:0,..")
    instances_per_device: int = Field(1, ge=1)
    intra_op_threads: int = Field(0, ge=0, description="per worker; 0: cores / workers")
    feature_threads: int = Field(0, ge=0, description="thread pool for decode and features; "
                                 "0: the cores of one serving process")
    native_frontend: bool = Field(True, description="compute a LogMel model's front end with "
                                  "numpy's FFT instead of its exported file, where a check at "
                                  "load finds the two agree within the export tolerance")
    gc_freeze: bool = Field(True, description="once the initial load has finished, take "
                            "every object alive then out of the cyclic garbage collector's "
                            "reach (gc.freeze): its full collections otherwise walk every "
                            "loaded library, pauses of tens of ms that set the p99 latency")
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_ms: float = Field(5.0, ge=0)
    max_queue_size: int = Field(512, ge=1, description="queued windows per model version")
    max_inflight_requests: int = Field(128, ge=1, description="inference requests being "
                                       "served (decoding, queued, running) before 503")
    request_timeout_s: float = Field(30.0, gt=0)
    batch_timeout_s: float = Field(10.0, gt=0, description="watchdog: a batch running longer "
                                   "fails and its worker is replaced")
    max_upload_bytes: int = Field(50 * MB, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    window_hop_fraction: float = Field(0.5, gt=0, le=1, description="/classify windows start "
                                       "every this fraction of a window (floor, >= 1 frame); "
                                       "1: back to back")
    detection_threshold: float = Field(0.5, gt=0, le=1, description="a keyword window at or "
                                       "above this probability is a /classify detection")
    drain_grace_s: float = Field(5.0, ge=0, description="on SIGTERM: keep listening and "
                                 "answering (503 shutting_down, Connection: close) this long "
                                 "after /readyz turns 503, so load balancers stop routing here "
                                 "before the port closes (Kubernetes takes a few seconds to "
                                 "remove an endpoint; 5 s is also uvicorn's keep-alive timeout)")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, after the grace: time "
                                   "for in-flight requests to finish")
    log_json: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    poll_interval_s: float = Field(0.0, ge=0, description="rescan the model store every N s "
                                   "(0: off; POST /admin/models/{name}/reload rescans on demand)")
    api_key: SecretStr | None = Field(None, description="if set, every endpoint but the ops "
                                      "ones needs it (Authorization: Bearer, or X-API-Key)")
    admin_key: SecretStr | None = Field(None, description="enables /admin/* (404 when unset), "
                                        "which needs this key")
    protect_ops: bool = Field(False, description="/healthz, /readyz, /metrics need the API key")
    cors_origins: CommaList = Field(default_factory=list,
                                    description="origins allowed by CORS; empty: CORS off")
    stream_hop_ms: float = Field(250.0, gt=0, description="WS /stream: a new model window "
                                 "every this many ms of audio (at most one window)")
    stream_refractory_s: float = Field(1.0, ge=0, description="WS /stream: default time after "
                                       "a detection in which the same keyword is not detected "
                                       "again (a client may set its own)")
    max_streams: int = Field(64, ge=1, description="WS /stream: concurrent streams per "
                             "serving process; more are closed with 1013")
    max_stream_seconds: float = Field(3600.0, gt=0, description="WS /stream: audio seconds "
                                      "one stream may send; then it is closed with 4408")
    stream_buffer_seconds: float = Field(2.0, gt=0, description="WS /stream: audio a stream "
                                         "may have waiting for the model; more (a client "
                                         "faster than real time) closes it with 4429")
    max_stream_chunk_bytes: int = Field(256 * 1024, gt=0, description="WS /stream: largest "
                                        "binary message; larger ones close it with 1009")

    _split = field_validator("models", "onnx_providers", "devices", "cors_origins",
                             mode="before")(_split_commas)

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """``DIFFRES_API_KEY=`` (empty) means no key, never the empty key."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    def process_count(self) -> int:
        """Serving processes: ``processes``, or one per usable core when it is 0."""
        return self.processes or usable_cores()

    def cores_per_process(self) -> int:
        """The cores one serving process plans its threads with."""
        return max(1, usable_cores() // self.process_count())

    def feature_thread_count(self) -> int:
        return self.feature_threads or self.cores_per_process()

    def masked(self) -> dict[str, Any]:
        """JSON-safe dump with secrets shown as ``**********``."""
        return self.model_dump(mode="json")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()
