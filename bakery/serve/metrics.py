"""What ``bakery serve`` says about itself: Prometheus metrics (``/metrics``) and JSON log lines."""

from __future__ import annotations

import json
import math
import sys
import threading
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


class JsonLog:
    """One JSON object per line on stderr (or ``stream``)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields) -> None:
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
               "event": event, **fields}
        line = json.dumps(rec, default=str) + "\n"
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass
