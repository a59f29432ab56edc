"""Lazy node tags for ``bakery serve``: the single-flight bake queue (the policy is
:mod:`bakery.serve.policy`, the metrics :mod:`bakery.serve.metrics`).

A manifest request for ``<repo>:<tag>-<target>`` that the upstream answers 404
comes here. :meth:`Lazy.ensure` decides, in this order:

0. the caller (the HTTP handler) has checked that the *client* can see the IR
   image ``<repo>:<tag>`` with its own credentials (``base_visible``); if not,
   nothing here runs, so the service's own credentials never tell a client
   whether a tag it may not see exists;
1. not a node tag (the part after the last ``-`` is no archspec name, once an
   optional ``-slim`` is set aside): a 404 saying the target is unknown;
2. a failure remembered for this node tag, less than ``backoff`` seconds old:
   the same error again, with ``Retry-After``;
3. the policy refuses the repository or the target: 403 ``DENIED``;
4. a bake of this node tag is already under way: wait for it (single flight);
5. otherwise this request leads a new flight: it *prepares* (the IR image and
   its plan, the target against the plan's ISA family; a few registry round
   trips), then queues the bake for a worker. A full queue is 429
   ``TOOMANYREQUESTS``.

Every request waits at most ``deadline`` seconds from its arrival; past that it
gets 503 ``UNAVAILABLE`` with ``Retry-After`` while the bake goes on, and a
retry joins the same flight (or finds the tag). A bake itself may take at most
``bake_timeout`` seconds: past that its flight is answered 504 (remembered like
any failure) and the worker takes the next one; the bake's processes are killed
by :func:`bakery.images.bake` at the same limit. The bake pushes blobs first and
the manifest last, so a service killed mid-bake leaves no tag and the next
request bakes again.

The prepared target is checked against the policy twice: as asked, and as
resolved (``zen5`` clamped to ``zen4`` by clang 16 is a zen4 bake, and the
policy must allow that too).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import archspec.cpu

from bakery import oci
from bakery import target as targetmod
from bakery.errors import BakeryError, NoImageForFamily
from bakery.serve.metrics import JsonLog, Metrics
from bakery.serve.policy import NodeTag, Policy, parse_node_tag, split_tag

MAX_MESSAGE = 2000
BAKE_TIMEOUT = 1800.0   # seconds a lazy bake may take (--bake-timeout)


# -- outcomes, flights ---------------------------------------------------------------

@dataclass
class Outcome:
    """What the requests of one flight are answered: status 200 = the tag is there."""

    status: int
    code: str | None = None
    message: str = ""
    digest: str | None = None
    retry_after: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def body(self) -> bytes:
        return json.dumps({"errors": [{"code": self.code, "message": self.message,
                                       "detail": {"retryAfter": self.retry_after} if self.retry_after else {}}]},
                          separators=(",", ":")).encode()


@dataclass
class Flight:
    repo: str
    node: NodeTag
    created: float = field(default_factory=time.monotonic)
    event: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    waiters: int = 1
    target: targetmod.Target | None = None
    ir_digest: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.repo, self.node.tag)


class Rejected(Exception):
    """A request this service answers with an error that is the client's (404)."""

    def __init__(self, outcome: Outcome, reason: str = "invalid", remember: bool = False):
        super().__init__(outcome.message)
        self.outcome, self.reason, self.remember = outcome, reason, remember


class BakeTimedOut(Exception):
    """A bake took longer than ``Lazy.bake_timeout``."""


BakeFn = Callable[["Flight", "Lazy"], str]   # returns the digest of the node tag


def bake_with_engine(engine, *, jobs: int = 0) -> BakeFn:
    """The real bake: :func:`bakery.images.bake` on the upstream, pushed there, its processes
    killed after ``lazy.bake_timeout`` seconds."""

    def run(flight: Flight, lazy: Lazy) -> str:
        from bakery import images as imagemod

        # Lazy abandons a bake past the limit anyway; images.bake's own limit also kills its processes.
        res = imagemod.bake(f"{lazy.upstream}/{flight.repo}:{flight.node.base}", engine, lazy.upstream,
                            flight.node.target, push=True, slim=flight.node.slim, jobs=jobs,
                            tls_verify=lazy.tls_verify, timeout=lazy.bake_timeout)
        return res.digest
    return run


class Lazy:
    """Single-flight lazy bakes with a bounded queue, ``workers`` threads, a per-request
    deadline, a time limit per bake and a failure memory of ``backoff`` seconds."""

    def __init__(self, upstream: str, bake_fn: BakeFn, *, policy: Policy | None = None, workers: int = 1,
                 queue_size: int = 16, deadline: float = 300.0, backoff: float = 30.0,
                 bake_timeout: float = BAKE_TIMEOUT, tls_verify: bool | None = None,
                 metrics: Metrics | None = None, log: JsonLog | None = None):
        if workers < 1 or queue_size < 1 or deadline <= 0 or backoff < 0 or not bake_timeout > 0:
            raise BakeryError("--workers and --queue must be >= 1, --deadline and --bake-timeout > 0 "
                              "and --backoff >= 0")
        self.bake_timeout = bake_timeout
        self.upstream = upstream
        self.tls_verify = oci.tls_default(upstream, tls_verify)
        self.bake_fn = bake_fn
        self.policy = policy or Policy.default()
        self.deadline, self.backoff = deadline, backoff
        self.metrics = metrics or Metrics()
        self.log = log or JsonLog()
        self.lock = threading.Lock()
        self.flights: dict[tuple[str, str], Flight] = {}
        self.failures: dict[tuple[str, str], tuple[float, Outcome]] = {}
        self.queue: queue.Queue[Flight] = queue.Queue(maxsize=queue_size)   # bakes waiting for a worker
        self.queue_size = queue_size
        self.workers = workers
        self.estimate = 10.0          # seconds a bake takes, updated as bakes finish (for Retry-After)
        self.metrics.queue_depth.set_function(self.queue.qsize)
        self._local = threading.local()
        for i in range(workers):
            threading.Thread(target=self._worker, name=f"bake-worker-{i}", daemon=True).start()

    # -- registry access (the service's own credentials) --

    def registry(self) -> oci.Registry:
        reg = getattr(self._local, "reg", None)
        if reg is None:
            reg = self._local.reg = oci.Registry(self.upstream, tls_verify=self.tls_verify)
        return reg

    # -- entry point --

    def ensure(self, repo: str, tag: str, arrived: float | None = None, *,
               base_visible: bool = False) -> Outcome | None:
        """None: let the upstream's 404 stand. Else the outcome to answer.

        ``base_visible``: the client, with its own credentials, was answered 200 for the IR image
        ``<repo>:<base>``. Without that nothing is looked up with the service's own credentials
        (they may see tags the client may not), and the 404 stands."""
        if not base_visible:
            return None
        arrived = time.monotonic() if arrived is None else arrived
        node = parse_node_tag(tag)
        if node is None:
            return self._unknown_target(repo, tag)
        key = (repo, node.tag)
        with self.lock:
            remembered = self.failures.get(key)
            if remembered and remembered[0] > time.monotonic():
                self.metrics.rejected.labels("backoff").inc()
                return dataclasses.replace(remembered[1], retry_after=max(1, math.ceil(remembered[0] - time.monotonic())))
            flight = self.flights.get(key)
            if flight is not None:
                flight.waiters += 1
                leader = False
            else:
                why = self.policy.allows(repo, node)
                if why:
                    self.metrics.rejected.labels("policy").inc()
                    self.log("lazy", repo=repo, tag=node.base, target=node.target, outcome="denied", error=why)
                    return Outcome(403, "DENIED", f"{repo}:{tag} is not baked on demand here: {why}")
                flight = Flight(repo, node, created=arrived)
                self.flights[key] = flight
                leader = True
        if leader:
            # Preparing takes registry round trips: in a thread of its own, so that the leader
            # too waits no longer than the deadline, whatever the upstream does.
            threading.Thread(target=self._lead, args=(flight,), name="bake-prepare", daemon=True).start()
        self.metrics.waiting.inc()
        try:
            done = flight.event.wait(timeout=max(0.0, self.deadline - (time.monotonic() - arrived)))
        finally:
            self.metrics.waiting.dec()
        if not done:
            self.metrics.rejected.labels("deadline").inc()
            left = max(1, math.ceil(self.estimate - (time.monotonic() - flight.created)))
            return Outcome(503, "UNAVAILABLE",
                           f"{repo}:{node.tag} is still being baked after the deadline of {self.deadline:g}s; "
                           f"retry later (the bake goes on)", retry_after=min(left, 300))
        return flight.outcome

    def _unknown_target(self, repo: str, tag: str) -> Outcome | None:
        """The hint for ``<base>-<no archspec name>``; the caller saw that the client can see
        ``<repo>:<base>``, so no registry look-up (with the service's credentials) is made."""
        parts = split_tag(tag)
        if parts is None:
            return None
        base, target, _ = parts
        if base == "sha256":  # the referrers tag schema (sha256-<hex>), cosign's sha256-<hex>.sig ...
            return None
        close = difflib.get_close_matches(target, archspec.cpu.TARGETS, n=3)
        self.metrics.rejected.labels("invalid").inc()
        return Outcome(404, "MANIFEST_UNKNOWN",
                       f"{repo}:{tag} does not exist and cannot be baked: {target!r} is not an archspec target"
                       + (f" (did you mean {', '.join(close)}?)" if close else "")
                       + f"; node tags are <tag>-<archspec target>[-slim], e.g. {base}-x86_64_v3")

    # -- the leader prepares and queues --

    def _lead(self, flight: Flight) -> None:
        self._answering(self._prepare_and_queue, flight)

    def _prepare_and_queue(self, flight: Flight) -> None:
        repo, node = flight.repo, flight.node
        t0 = time.monotonic()
        try:
            existing = self._prepare(flight)
        except Rejected as r:
            self.metrics.rejected.labels(r.reason).inc()
            self.log("lazy", repo=repo, tag=node.base, target=node.target, outcome="rejected", error=r.outcome.message)
            self._finish(flight, r.outcome, remember=r.remember)
            return
        except Exception as e:  # noqa: BLE001 - the client gets the reason, the service goes on
            msg = _reason(e)
            self.metrics.failed.inc()
            out = Outcome(502, "UNKNOWN", _clip(f"cannot bake {repo}:{node.tag}: {msg}"))
            self.log("bake", repo=repo, tag=node.base, target=node.target, node_tag=node.tag,
                     duration=round(time.monotonic() - t0, 3), outcome="failed", phase="prepare", error=_clip(msg))
            self._finish(flight, out, remember=True)
            return
        if existing:
            self._finish(flight, Outcome(200, digest=existing, message="exists"))
            return
        try:
            self.queue.put_nowait(flight)
        except queue.Full:
            self.metrics.rejected.labels("busy").inc()
            wait = min(300, max(1, math.ceil(self.estimate * (self.queue.qsize() / self.workers + 1))))
            out = Outcome(429, "TOOMANYREQUESTS",
                          f"the bake queue is full ({self.queue_size} waiting, {self.workers} baking); "
                          f"{repo}:{node.tag} was not queued, retry later", retry_after=wait)
            self.log("lazy", repo=repo, tag=node.base, target=node.target, outcome="busy")
            self._finish(flight, out)

    def _prepare(self, flight: Flight) -> str | None:
        """The node tag's digest when it exists already; else check it can be baked."""
        from bakery import images as imagemod

        reg, repo, node = self.registry(), flight.repo, flight.node
        existing = reg.head_manifest(repo, node.tag)
        if existing:
            return existing
        if reg.head_manifest(repo, node.base) is None:
            raise Rejected(Outcome(404, "MANIFEST_UNKNOWN",
                                   f"{repo}:{node.tag} cannot be baked: there is no IR image {repo}:{node.base}"))
        ref = oci.Ref.parse(f"{self.upstream}/{repo}:{node.base}")
        family = archspec.cpu.TARGETS[node.target].family.name
        # A multi-ISA IR image (an index) has one image per family: the target's is baked.
        try:
            flight.ir_digest, plan, _ = imagemod.resolve_ir(reg, ref, family=family)
        except NoImageForFamily as e:
            raise Rejected(Outcome(404, "MANIFEST_UNKNOWN", f"{repo}:{node.tag} cannot be baked: {e.message}"),
                           remember=True) from None
        tc = plan.toolchain
        try:
            flight.target = targetmod.resolve(node.target, compiler_version=tc.version, family=tc.family)
        except BakeryError as e:
            raise Rejected(Outcome(404, "MANIFEST_UNKNOWN", f"{repo}:{node.tag} cannot be baked: {e.message}"),
                           remember=True) from None
        if flight.target.name != node.target:
            # A clamped target (zen5 -> zen4) is a bake for the resolved one: the policy must allow it too.
            why = self.policy.allows(repo, dataclasses.replace(node, target=flight.target.name))
            if why:
                raise Rejected(Outcome(403, "DENIED", f"{repo}:{node.tag} is not baked on demand here: "
                                       f"{node.target} would be baked as {flight.target.name}, and {why}"),
                               reason="policy", remember=True)
        return None

    # -- workers bake --

    def _worker(self) -> None:
        while True:
            self._answering(self._bake, self.queue.get())

    def _bake(self, flight: Flight) -> None:
        repo, node = flight.repo, flight.node
        m = self.metrics
        m.started.inc()
        m.in_flight.inc()
        t0 = time.monotonic()
        self.log("bake_start", repo=repo, tag=node.base, target=node.target, node_tag=node.tag,
                 ir_digest=flight.ir_digest, waiters=flight.waiters)
        try:
            out, remember = self._bake_within_limit(flight), False
        except Exception as e:  # noqa: BLE001
            if isinstance(e, BakeTimedOut):
                m.timed_out.inc()
                out = Outcome(504, "UNAVAILABLE", f"the bake of {repo}:{node.tag} exceeded {self.bake_timeout:g} s "
                                                  f"(--bake-timeout) and was abandoned")
            else:
                msg = _reason(e)
                out = Outcome(502, "UNKNOWN", _clip(f"the bake of {repo}:{node.tag} failed: {msg}"))
            remember = True
        finally:
            m.in_flight.dec()
        seconds = time.monotonic() - t0
        m.duration.observe(seconds)
        (m.succeeded if out.ok else m.failed).inc()
        if out.ok:
            self.estimate = 0.7 * self.estimate + 0.3 * seconds
        self.log("bake", repo=repo, tag=node.base, target=node.target, node_tag=node.tag,
                 resolved_target=flight.target.name if flight.target else None, duration=round(seconds, 3),
                 outcome="succeeded" if out.ok else "failed", digest=out.digest, waiters=flight.waiters,
                 **({} if out.ok else {"error": out.message}))
        self._finish(flight, out, remember=remember)

    def _bake_within_limit(self, flight: Flight) -> Outcome:
        """The bake (and the alias of a clamped target) in a thread of its own, so that one that
        hangs costs ``bake_timeout`` seconds of this worker, not the worker: BakeTimedOut past it.
        The abandoned thread's result, if it ever comes, is dropped (a tag it pushed is just there)."""
        result: list = []
        done = threading.Event()

        def run() -> None:
            try:
                digest = self.bake_fn(flight, self)
                if flight.target is not None and flight.target.name != flight.node.target:
                    digest = self._alias(flight, digest)
                result.append(Outcome(200, digest=digest, message="baked"))
            except BaseException as e:  # noqa: BLE001 - handed to the worker
                result.append(e)
            finally:
                done.set()

        threading.Thread(target=run, name=f"bake-{flight.node.tag}"[:60], daemon=True).start()
        if not done.wait(self.bake_timeout):
            raise BakeTimedOut(f"bake exceeded {self.bake_timeout:g} s")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _alias(self, flight: Flight, digest: str) -> str:
        """A target the toolchain clamps (zen5 -> zen4) was baked under the clamped name:
        the requested tag points to the same manifest."""
        reg = self.registry()
        data, mt, got = reg.get_manifest(flight.repo, digest)
        reg.put_manifest(flight.repo, flight.node.tag, data, mt)
        return got

    def _answering(self, step: Callable[[Flight], None], flight: Flight) -> None:
        """``step(flight)``, and its waiters answered whatever happens: an error ``step`` did not
        answer them for is a 500 (remembered), never waiters left hanging until their deadline."""
        try:
            step(flight)
        except BaseException as e:  # noqa: BLE001 - never leave waiters hanging
            if not flight.event.is_set():
                self._finish(flight, Outcome(500, "UNKNOWN", f"internal error: {e!r}"), remember=True)

    def _finish(self, flight: Flight, outcome: Outcome, remember: bool = False) -> None:
        now = time.monotonic()
        if remember and self.backoff > 0 and outcome.retry_after is None:
            outcome.retry_after = max(1, math.ceil(self.backoff))
        with self.lock:
            flight.outcome = outcome
            if self.flights.get(flight.key) is flight:
                del self.flights[flight.key]
            if remember and self.backoff > 0:
                for k in [k for k, (exp, _) in self.failures.items() if exp <= now]:
                    del self.failures[k]
                self.failures[flight.key] = (now + self.backoff, outcome)
            else:
                self.failures.pop(flight.key, None)
        flight.event.set()


def _reason(e: Exception) -> str:
    """What a client is told of a failure: a BakeryError's message, else the exception named."""
    return e.message if isinstance(e, BakeryError) else f"{type(e).__name__}: {e}"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 15] + " ... (clipped)"
