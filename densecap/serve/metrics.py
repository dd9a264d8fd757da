"""Prometheus metrics of one app, in a registry of its own (several apps can live in one process).

    densecap_requests_total{endpoint, method, status}   requests answered
    densecap_request_seconds{endpoint}                  latency histogram (whole request)
    densecap_batch_size                                 images per model call (dynamic batching)
    densecap_inference_seconds                          seconds per model call
    densecap_queue_depth                                images waiting for the model
    densecap_images_captioned_total                     images captioned
    densecap_searches_total{mode}                       searches run

``endpoint`` is the route's path template (``/v1/images/{name}``), ``other`` for unknown paths, so
the label set stays bounded whatever clients send.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("densecap_requests", "HTTP requests answered", ("endpoint", "method", "status"), registry=r)
        self.latency = Histogram("densecap_request_seconds", "HTTP request latency", ("endpoint",),
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("densecap_batch_size", "images per model call (dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("densecap_inference_seconds", "seconds per model call", buckets=LATENCY_BUCKETS,
                                   registry=r)
        self.queue_depth = Gauge("densecap_queue_depth", "images waiting for the model", registry=r)
        self.captioned = Counter("densecap_images_captioned", "images captioned", registry=r)
        self.searches = Counter("densecap_searches", "searches run", ("mode",), registry=r)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def on_queue(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST
