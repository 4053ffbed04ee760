"""Every Prometheus metric of the service, with fixed names, on a per-app registry.

Histograms are in seconds with buckets suited to millisecond latencies. Each app builds its
own ``Metrics`` (and ``CollectorRegistry``) so tests can create many apps in one process.

When several processes serve one port, the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
before it starts them: every process then writes its values there and ``render`` sums them
(prometheus_client's multiprocess mode), so a scrape that reaches any one process sees the
whole server. Gauges say how to combine: queue depth and in-flight requests add up over the
live processes, ``model_info`` is 1 when any live process serves the version.
"""

import os
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client at import


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they confuse dashboards and promtool
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("diffres_requests", "HTTP requests by endpoint, model and status.",
                                ["endpoint", "model", "status"], registry=r)
        self.request_duration = Histogram(
            "diffres_request_duration_seconds", "HTTP request latency.", ["endpoint", "model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "diffres_queue_wait_seconds", "Time a window waited in the batch queue.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram(
            "diffres_inference_duration_seconds", "Backend time per batch.",
            ["model", "backend", "device"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("diffres_batch_size", "Windows per batch.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("diffres_queue_depth", "Windows waiting in the batch queue.",
                                 ["model"], registry=r, multiprocess_mode="livesum")
        self.inflight = Gauge("diffres_inflight_requests", "Inference requests being served.",
                              registry=r, multiprocess_mode="livesum")
        self.audio_seconds = Counter("diffres_audio_seconds", "Seconds of input audio served.",
                                     ["model"], registry=r)
        self.input_frames = Counter("diffres_input_frames", "Spectrogram frames fed to models.",
                                    ["model"], registry=r)
        self.output_frames = Counter("diffres_output_frames",
                                     "Frames produced by the temporal compression.", ["model"],
                                     registry=r)
        self.worker_replacements = Counter(
            "diffres_worker_replacements", "Workers replaced after a hung batch or a failed "
            "probe.", ["model"], registry=r)
        self.model_info = Gauge("diffres_model_info", "1 for every model version being served.",
                                ["model", "version", "backend", "device"], registry=r,
                                multiprocess_mode="livemax")
        self.active_streams = Gauge("diffres_active_streams", "Open WS /stream connections.",
                                    registry=r, multiprocess_mode="livesum")
        self.stream_audio_seconds = Counter("diffres_stream_audio_seconds",
                                            "Seconds of audio received by streams.", ["model"],
                                            registry=r)
        self.stream_detection_latency = Histogram(
            "diffres_stream_detection_latency_seconds", "From the arrival of the last sample of "
            "the window holding a detection to the detection's send.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)

    def for_model(self, model: str) -> "ModelMetrics":
        return ModelMetrics(self, model)

    def render(self) -> bytes:
        if MULTIPROC_ENV in os.environ:
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


@dataclass
class ModelMetrics:
    """The batcher's view: metrics already bound to one model label."""

    parent: Metrics
    model: str

    def queue_changed(self, delta: int) -> None:
        """Depth moves by deltas so several versions of one model add up on one series."""
        self.parent.queue_depth.labels(self.model).inc(delta)

    def queue_wait(self, seconds: float) -> None:
        self.parent.queue_wait.labels(self.model).observe(seconds)

    def batch(self, size: int, seconds: float, backend: str, device: str) -> None:
        self.parent.batch_size.labels(self.model).observe(size)
        self.parent.inference_duration.labels(self.model, backend, device).observe(seconds)

    def worker_replaced(self) -> None:
        self.parent.worker_replacements.labels(self.model).inc()
