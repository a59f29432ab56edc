"""bakery serve: lazy node tags through a registry front, on a real registry with real buildah.

The service runs as a subprocess (``bakery serve``: what clients see, and what
``kill -9`` can kill) for the end-to-end tests, and in a thread with a stub bake
where the test is about queueing, deadlines and failures, not about baking.
Each test uses pi node tags no other module bakes (or deletes one first), so
"never baked" holds in a full run too.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import Service, fresh, in_process_services, request
from prometheus_client.parser import text_string_to_metric_families

from bakery import oci
from bakery.errors import BakeryError
from bakery.serve.policy import Policy

pytestmark = pytest.mark.slow

ACCEPT = ", ".join([oci.MANIFEST, oci.INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_LIST])


# -- helpers ---------------------------------------------------------------------

def get_manifest(addr: str, repo: str, tag: str, method: str = "GET"):
    return request(addr, method, f"/v2/{repo}/manifests/{tag}", {"Accept": ACCEPT})


def metrics(addr: str) -> dict[str, float]:
    _, _, body = request(addr, "GET", "/metrics", timeout=10)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def oci_error(body: bytes) -> dict:
    errs = json.loads(body)["errors"]
    assert len(errs) == 1 and errs[0]["code"] and errs[0]["message"], errs
    return errs[0]


def buildah_in_session(sid: int) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) == sid and b"buildah" in open(f"/proc/{pid}/cmdline", "rb").read():
                return True
        except OSError:
            pass
    return False


@pytest.fixture(scope="module")
def pi(images):
    return images.ir("pi")


@pytest.fixture(scope="module")
def service(registry, pi, tmp_path_factory):
    svc = Service(registry, tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield svc
    svc.stop()


@pytest.fixture
def threaded(registry, tmp_path):
    """An in-process service with a stub bake (fast: for queueing, deadlines, failures, policy)."""
    yield from in_process_services(registry, tmp_path)


# -- end to end, through the real service ----------------------------------------------

def test_skopeo_inspect_bakes_a_never_baked_node_tag(service, registry):
    fresh(registry, "pi", "1.0-x86_64_v3")
    before = metrics(service.addr)
    cp = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{service.addr}/pi:1.0-x86_64_v3"],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr + service.log()
    info = json.loads(cp.stdout)
    assert info["Labels"]["dev.bakery.target"] == "x86_64_v3"
    assert oci.Registry(registry).head_manifest("pi", "1.0-x86_64_v3") == info["Digest"]  # pushed upstream
    after = metrics(service.addr)
    assert after["bakery_serve_bakes_started_total"] - before["bakery_serve_bakes_started_total"] == 1
    assert after["bakery_serve_bakes_succeeded_total"] - before["bakery_serve_bakes_succeeded_total"] == 1
    rec = [b for b in service.bakes() if b["node_tag"] == "1.0-x86_64_v3"][-1]
    assert rec["repo"] == "pi" and rec["tag"] == "1.0" and rec["target"] == "x86_64_v3"
    assert rec["outcome"] == "succeeded" and rec["duration"] > 0 and rec["digest"] == info["Digest"]
    # Again: a cache hit, answered by the upstream, nothing bakes.
    status, headers, _ = get_manifest(service.addr, "pi", "1.0-x86_64_v3")
    assert status == 200 and headers["docker-content-digest"] == info["Digest"]
    again = metrics(service.addr)
    assert again["bakery_serve_bakes_started_total"] == after["bakery_serve_bakes_started_total"]
    assert again["bakery_serve_cache_hits_total"] == after["bakery_serve_cache_hits_total"] + 1


def test_50_concurrent_pulls_bake_once(service, registry):
    fresh(registry, "pi", "1.0-x86_64_v4")
    before = metrics(service.addr)
    barrier = threading.Barrier(50)

    def pull(_):
        barrier.wait()
        return get_manifest(service.addr, "pi", "1.0-x86_64_v4")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(pull, range(50)))
    assert [r[0] for r in results] == [200] * 50, [r[2][:300] for r in results if r[0] != 200]
    digests = {r[1]["docker-content-digest"] for r in results}
    bodies = {hashlib.sha256(r[2]).hexdigest() for r in results}
    assert len(digests) == 1 and bodies == {digests.pop().split(":")[1]}
    after = metrics(service.addr)
    assert after["bakery_serve_bakes_started_total"] - before["bakery_serve_bakes_started_total"] == 1
    assert after["bakery_serve_bakes_succeeded_total"] - before["bakery_serve_bakes_succeeded_total"] == 1
    assert after["bakery_serve_bakes_in_flight"] == 0 and after["bakery_serve_queue_depth"] == 0
    assert after["bakery_serve_bake_duration_seconds_count"] - before["bakery_serve_bake_duration_seconds_count"] == 1


def test_a_clamped_target_is_tagged_as_asked(service, registry):
    """clang 16 cannot target zen5: the bake is zen4's, and pi:1.0-zen5 points to it."""
    status, headers, body = get_manifest(service.addr, "pi", "1.0-zen5")
    assert status == 200, body
    reg = oci.Registry(registry)
    assert reg.head_manifest("pi", "1.0-zen5") == reg.head_manifest("pi", "1.0-zen4") == headers["docker-content-digest"]
    rec = [b for b in service.bakes() if b["node_tag"] == "1.0-zen5"][-1]
    assert rec["resolved_target"] == "zen4" and rec["outcome"] == "succeeded"


def test_invalid_targets_and_tags_are_clear_404s(service):
    status, _, body = get_manifest(service.addr, "pi", "1.0-zen9")
    err = oci_error(body)
    assert status == 404 and err["code"] == "MANIFEST_UNKNOWN" and "not an archspec target" in err["message"]
    assert "zen" in err["message"]  # close matches are offered
    status, _, body = get_manifest(service.addr, "pi", "1.0-neoverse_v1")
    err = oci_error(body)
    assert status == 404 and err["code"] == "MANIFEST_UNKNOWN" and "aarch64" in err["message"], err
    status, _, body = get_manifest(service.addr, "pi", "9.9-x86_64_v3")
    err = oci_error(body)
    assert status == 404 and err["code"] == "MANIFEST_UNKNOWN" and "no IR image pi:9.9" in err["message"]
    status, _, body = get_manifest(service.addr, "pi", "nosuchtag")  # not a node tag: the upstream's own 404
    assert status == 404 and oci_error(body)["code"] == "MANIFEST_UNKNOWN"
    status, _, _ = get_manifest(service.addr, "pi", "1.0-zen9", method="HEAD")
    assert status == 404


def test_blobs_and_uploads_pass_through(service, registry, pi):
    status, _, body = get_manifest(service.addr, "pi", "1.0")
    assert status == 200
    layer = json.loads(body)["layers"][0]  # the Debian base layer
    host, port = service.addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("GET", f"/v2/pi/blobs/{layer['digest']}")
    r = c.getresponse()
    assert r.status == 200 and int(r.getheader("Content-Length")) == layer["size"]
    h, n = hashlib.sha256(), 0
    while piece := r.read(1 << 20):
        h.update(piece)
        n += len(piece)
    c.close()
    assert "sha256:" + h.hexdigest() == layer["digest"] and n == layer["size"]
    status, headers, _ = request(service.addr, "HEAD", f"/v2/pi/blobs/{layer['digest']}")
    assert status == 200 and headers["docker-content-digest"] == layer["digest"]
    # An upload: the Location points back at the service, and the blob lands upstream.
    data = os.urandom(100_000)
    status, headers, _ = request(service.addr, "POST", "/v2/pi/blobs/uploads/")
    assert status == 202 and headers["location"].startswith(f"http://{service.addr}/v2/pi/blobs/uploads/")
    digest = oci.sha256(data)
    loc = headers["location"].removeprefix(f"http://{service.addr}")
    status, _, body = request(service.addr, "PUT", f"{loc}&digest={digest}", {"Content-Type": "application/octet-stream"},
                              body=data)
    assert status == 201, body
    assert oci.Registry(registry).get_blob("pi", digest) == data
    status, _, body = request(service.addr, "GET", "/v2/_catalog")
    assert status == 200 and "pi" in json.loads(body)["repositories"]
    status, _, body = request(service.addr, "GET", "/v2/pi/tags/list")
    assert status == 200 and "1.0" in json.loads(body)["tags"]


def test_buildah_pull_through_the_service_runs(service, registry):
    ref = f"{service.addr}/pi:1.0-sandybridge"
    cp = subprocess.run(["buildah", "pull", "-q", "--tls-verify=false", ref], capture_output=True, text=True,
                        timeout=300)
    assert cp.returncode == 0, cp.stderr + service.log()
    ctr = subprocess.run(["buildah", "from", "--pull-never", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        out = subprocess.run(["buildah", "run", "--isolation=chroot", ctr, "--", "pi", "100000"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "3.14" in out.stdout, out.stdout + out.stderr
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        subprocess.run(["buildah", "rmi", "-f", ref], capture_output=True)
    assert oci.Registry(registry).head_manifest("pi", "1.0-sandybridge")


def test_kill9_mid_bake_leaves_no_tag_and_a_restart_bakes(service, registry):
    fresh(registry, "pi", "1.0-ivybridge")
    reg = oci.Registry(registry)
    pending = ThreadPoolExecutor(1).submit(get_manifest, service.addr, "pi", "1.0-ivybridge")
    deadline = time.monotonic() + 60
    while metrics(service.addr)["bakery_serve_bakes_in_flight"] != 1:
        assert time.monotonic() < deadline and not pending.done(), "the bake never started"
        time.sleep(0.05)
    # In flight: kill while buildah works for it (pull, the bake inside the IR image, commit or push).
    while not buildah_in_session(service.proc.pid):
        assert time.monotonic() < deadline and not pending.done(), "no buildah ran for the bake"
        time.sleep(0.01)
    service.kill9()
    with pytest.raises(OSError):
        pending.result(timeout=30)
    assert reg.head_manifest("pi", "1.0-ivybridge") is None
    service.start()
    status, headers, _ = get_manifest(service.addr, "pi", "1.0-ivybridge")
    assert status == 200, service.log()
    assert reg.head_manifest("pi", "1.0-ivybridge") == headers["docker-content-digest"]


def test_healthz_and_metrics_format(service):
    status, _, body = request(service.addr, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    m = metrics(service.addr)
    for name in ("bakery_serve_bakes_started_total", "bakery_serve_bakes_succeeded_total",
                 "bakery_serve_bakes_failed_total", "bakery_serve_cache_hits_total", "bakery_serve_queue_depth",
                 "bakery_serve_bakes_in_flight", "bakery_serve_bake_duration_seconds_count"):
        assert name in m, name


# -- in-process: policy, failures, queue, deadline ----------------------------------------

def test_policy_refuses_repositories_and_targets(threaded, registry, pi, tmp_path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("rules:\n  - repositories: [pi]\n    targets: [\"x86_64_v3+\", nehalem]\n    slim: false\n")
    srv = threaded(policy=Policy.load(policy_file))
    status, _, body = get_manifest(srv.address, "pi", "1.0-core2")  # a target no other test bakes
    err = oci_error(body)
    assert status == 403 and err["code"] == "DENIED" and "core2" in err["message"] and "policy" in err["message"]
    status, _, body = get_manifest(srv.address, "pi", "1.0-icelake-slim")
    assert status == 403 and "-slim" in oci_error(body)["message"]
    status, _, body = get_manifest(srv.address, "bakery/debian", "bookworm-x86_64_v3")
    assert status == 403 and "bakery/debian" in oci_error(body)["message"]
    assert srv.lazy.metrics.started._value.get() == 0
    # The policy's own decisions, without a service: tests/test_serve_security.py


def test_failed_bakes_are_remembered_for_the_backoff_then_retried(threaded, registry, pi):
    # A repository without a plan: the image exists, nothing can bake it.
    srv = threaded(backoff=1.5)
    m = srv.lazy.metrics
    status, headers, body = get_manifest(srv.address, "bakery/debian", "bookworm-x86_64")
    err = oci_error(body)
    assert status == 502 and err["code"] == "UNKNOWN" and "no bake plan" in err["message"]
    assert int(headers["retry-after"]) >= 1
    assert m.failed._value.get() == 1
    t0 = time.monotonic()
    status, headers, body = get_manifest(srv.address, "bakery/debian", "bookworm-x86_64")
    assert status == 502 and "no bake plan" in oci_error(body)["message"] and "retry-after" in headers
    assert m.failed._value.get() == 1 and m.rejected.labels("backoff")._value.get() == 1
    time.sleep(max(0.0, 1.6 - (time.monotonic() - t0)))
    status, _, _ = get_manifest(srv.address, "bakery/debian", "bookworm-x86_64")
    assert status == 502 and m.failed._value.get() == 2  # tried again after the backoff

    # A bake that fails in the worker: its reason reaches the client; a retry after the backoff bakes again.
    calls = []

    def failing(flight, lazy):
        calls.append(flight.node.tag)
        if len(calls) == 1:
            raise BakeryError("command failed (exit 1): buildah run ... out of disk")
        return "sha256:" + "1" * 64

    srv = threaded(bake_fn=failing, backoff=1.0)
    status, headers, body = get_manifest(srv.address, "pi", "1.0-core2")
    err = oci_error(body)
    assert status == 502 and err["code"] == "UNKNOWN" and "out of disk" in err["message"]
    assert headers["retry-after"] == "1"
    assert get_manifest(srv.address, "pi", "1.0-core2")[0] == 502 and calls == ["1.0-core2"]
    time.sleep(1.1)
    status, _, _ = get_manifest(srv.address, "pi", "1.0-core2")  # the stub pushes nothing: upstream 404
    assert status == 404 and calls == ["1.0-core2", "1.0-core2"]
    assert srv.lazy.metrics.succeeded._value.get() == 1 and srv.lazy.metrics.failed._value.get() == 1


def test_full_queue_is_429_and_the_deadline_is_503(threaded, registry, pi):
    release = threading.Event()

    def slow(flight, lazy):
        release.wait(30)
        return "sha256:" + "2" * 64

    srv = threaded(bake_fn=slow, workers=1, queue_size=1, deadline=1.5)
    m = srv.lazy.metrics
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(get_manifest, srv.address, "pi", "1.0-zen")
            t_end = time.monotonic() + 10
            while m.in_flight._value.get() != 1:
                assert time.monotonic() < t_end
                time.sleep(0.02)
            second = pool.submit(get_manifest, srv.address, "pi", "1.0-nocona")
            while m.queue_depth.collect()[0].samples[0].value != 1:
                assert time.monotonic() < t_end
                time.sleep(0.02)
            t0 = time.monotonic()
            status, headers, body = get_manifest(srv.address, "pi", "1.0-nehalem")
            assert status == 429 and oci_error(body)["code"] == "TOOMANYREQUESTS" and int(headers["retry-after"]) >= 1
            assert time.monotonic() - t0 < 1.0
            for fut in (first, second):
                status, headers, body = fut.result(timeout=10)
                assert status == 503 and oci_error(body)["code"] == "UNAVAILABLE", body
                assert int(headers["retry-after"]) >= 1
            # A request for the bake under way joins it (no second bake) and meets the deadline too.
            assert get_manifest(srv.address, "pi", "1.0-zen")[0] == 503
            assert m.started._value.get() == 1
    finally:
        release.set()
    t_end = time.monotonic() + 10
    while m.succeeded._value.get() != 2:  # the two queued bakes went on after their requests gave up
        assert time.monotonic() < t_end
        time.sleep(0.05)
    assert m.rejected.labels("busy")._value.get() == 1 and m.rejected.labels("deadline")._value.get() == 3
