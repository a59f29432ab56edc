"""What ``bakery serve`` says about itself: Prometheus metrics (``/metrics``) and JSON log lines."""

from __future__ import annotations

import json
import logging
import math
import sys
import time

import prometheus_client as prom


class Metrics:
    """Prometheus metrics of one service (own registry: several services may share a process)."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.started = prom.Counter("bakery_serve_bakes_started", "Bakes handed to a worker", registry=r)
        self.succeeded = prom.Counter("bakery_serve_bakes_succeeded", "Bakes that pushed their node tag", registry=r)
        self.failed = prom.Counter("bakery_serve_bakes_failed",
                                   "Lazy bakes that failed (preparing: no plan, registry errors; or baking)",
                                   registry=r)
        self.cache_hits = prom.Counter("bakery_serve_cache_hits",
                                       "Node-tag manifest requests answered by the upstream", registry=r)
        self.rejected = prom.Counter("bakery_serve_rejected",
                                     "Lazy node-tag requests answered with an error without a new bake",
                                     ["reason"], registry=r)
        for reason in ("invalid", "policy", "busy", "deadline", "backoff"):
            self.rejected.labels(reason)
        self.timed_out = prom.Counter("bakery_serve_bakes_timed_out",
                                      "Bakes abandoned for taking longer than --bake-timeout", registry=r)
        self.connections = prom.Gauge("bakery_serve_connections", "Client connections open", registry=r)
        self.connections_refused = prom.Counter("bakery_serve_connections_refused",
                                                "Client connections answered 503 at once: --max-connections reached",
                                                registry=r)
        self.connections_timed_out = prom.Counter("bakery_serve_connections_timed_out",
                                                  "Client connections cut: request head not sent in time",
                                                  registry=r)
        self.duration = prom.Histogram("bakery_serve_bake_duration_seconds", "Duration of bakes run by workers",
                                       buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, math.inf),
                                       registry=r)
        self.queue_depth = prom.Gauge("bakery_serve_queue_depth", "Bakes waiting for a worker", registry=r)
        self.in_flight = prom.Gauge("bakery_serve_bakes_in_flight", "Bakes being run by workers", registry=r)
        self.waiting = prom.Gauge("bakery_serve_requests_waiting", "Requests waiting for a bake", registry=r)

    def text(self) -> bytes:
        return prom.generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``event`` (the message) and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return json.dumps({"ts": ts, "event": record.getMessage(), **getattr(record, "fields", {})}, default=str)


class JsonLog:
    """serve's event log: one JSON line per event on stderr (or ``stream``), written through
    logging with :class:`JsonFormatter`. Its own logger, outside the ``bakery`` tree, so the CLI's
    progress settings (-q) never silence it and it never reaches another handler."""

    def __init__(self, stream=None):
        self.logger = logging.Logger("bakery.serve.events", logging.INFO)
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.handleError = lambda record: None  # type: ignore[method-assign]  # a closed stream: the event is lost, serve goes on
        self.logger.addHandler(handler)

    def __call__(self, event: str, **fields) -> None:
        self.logger.info(event, extra={"fields": fields})
