"""Prometheus metrics (prometheus_client, one registry per app) and the access log.

The log line of a request holds its id, the size of its body, its status and its latency, nothing else: no
client address, no file name, no query string, so that nothing about a patient can reach the logs.
"""

from __future__ import annotations

import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("chexnet.serve")

ROUTES = ("/v1/predict", "/v1/heatmap", "/v1/image", "/v1/model", "/healthz", "/readyz", "/metrics", "/")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# connections the slow-client guards of chexnet.serve.protocol closed or refused, by reason (this process's)
CONNECTION_CUTS = {"header_timeout": 0, "idle": 0, "headers_too_large": 0, "over_connection_limit": 0,
                   "unread_body": 0}


class _ConnectionCuts:
    def collect(self):
        family = CounterMetricFamily("chexnet_connections_cut", "Connections the slow-client guards closed or "
                                     "refused, by reason", labels=["reason"])
        for reason, n in CONNECTION_CUTS.items():
            family.add_metric([reason], n)
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth=lambda: 0, uploads_in_flight=lambda: 0):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("chexnet_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("chexnet_request_errors", "Failed requests by kind of error", ["kind"], registry=r)
        self.latency = Histogram("chexnet_request_latency_seconds", "Request latency, body read to answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("chexnet_batch_size", "Images per forward pass (dynamic batching)",
                               buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("chexnet_inference_seconds", "Time of one batched forward pass",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("chexnet_queue_depth", "Decoded images waiting for a forward pass", registry=r)
        self.queue.set_function(queue_depth)
        self.uploads = Gauge("chexnet_uploads_in_flight", "Uploads being read or decoded (at most --max-uploads)",
                             registry=r)
        self.uploads.set_function(uploads_in_flight)
        r.register(_ConnectionCuts())

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.inference.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_of(path: str) -> str:
    if path.startswith("/static/"):
        return "/static"
    return path if path in ROUTES else "other"


class AccessLog:
    """ASGI middleware: a request id (also sent back as X-Request-ID), ``headers`` added to every response that
    does not set them itself, the request counter and latency, one log line per request."""

    def __init__(self, app, metrics: Metrics, headers: dict[str, str] | None = None):
        self.app, self.metrics = app, metrics
        self.headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = rid
        started, state = time.perf_counter(), {"status": 500, "size": 0}

        async def receive_counted():
            message = await receive()
            if message["type"] == "http.request":
                state["size"] += len(message.get("body", b""))
            return message

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive_counted, send_tagged)
        finally:
            took = time.perf_counter() - started
            route = route_of(scope["path"])
            self.metrics.requests.labels(route, str(state["status"])).inc()
            self.metrics.latency.labels(route).observe(took)
            log.info("request id=%s bytes=%d status=%d ms=%.1f", rid, state["size"], state["status"], took * 1000)
