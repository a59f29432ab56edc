"""The self-finishing image, run as users run it: real `podman run` of the real IR image, a real
registry on loopback, real bakes in the container, real `bakery serve`.

The wordstat example is used: it reads stdin, prints its argv[0] in its usage, exits 2 on bad
arguments and loads a shared library of its own (libwordstat.so.1, found by $ORIGIN)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import Service, fresh, podman_containers_conf, validate_k8s

from bakery import images as imagemod
from bakery.scale import k8s

pytestmark = pytest.mark.slow

TEXT = "the cat and the hat\nthe end\n"


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("these tests run podman as root, sharing buildah's image store")
    conf = podman_containers_conf(tmp_path_factory.mktemp("podman") / "containers.conf")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def wordstat(images, registry):
    images.ir("wordstat")
    return f"{registry}/wordstat:1.0"


@pytest.fixture(scope="module")
def expected(builds):
    baked = builds.baked("wordstat", "x86_64_v3") / "wordstat"
    return subprocess.run([baked, "-"], input=TEXT, capture_output=True, text=True, check=True).stdout


def run(podman_env, image: str, *args: str, cache: Path | None = None, env: dict | None = None,
        network: str = "host", stdin: str | None = TEXT, extra: tuple[str, ...] = (), timeout: float = 600):
    argv = ["podman", "run", "--rm", "-i", f"--network={network}", "--pull=missing", "--tls-verify=false"]
    if cache is not None:
        argv += ["-v", f"{cache}:/var/cache/bakery"]
    for k, v in (env or {}).items():
        argv += ["-e", f"{k}={v}"]
    return subprocess.run([*argv, *extra, image, *args], input=stdin, capture_output=True, text=True,
                          env=podman_env, timeout=timeout)


def bake_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("bakery: baking")
            and "modules" not in line and ", starting," not in line and "linking" not in line]


def entries(cache: Path) -> list[dict]:
    v1 = cache / "v1"
    return [json.loads(p.read_text()) for p in sorted(v1.glob("*/entry.json"))] if v1.exists() else []


def test_the_ir_image_runs_its_app_and_bakes_once_per_cache(podman, wordstat, expected, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first = run(podman, wordstat, "-", cache=cache, env={"BAKERY_TARGET": "x86_64_v3"}, network="none")
    assert first.returncode == 0, first.stderr
    assert first.stdout == expected
    (line,) = bake_lines(first.stderr)
    assert line.startswith("bakery: baking wordstat 1.0 for x86_64_v3: the first start on this CPU type (")
    assert "unreachable" in line, line  # --network=none: the registry is not there, the bake is
    second = run(podman, wordstat, "-", cache=cache, env={"BAKERY_TARGET": "x86_64_v3"}, network="none")
    assert (second.returncode, second.stderr, second.stdout) == (0, "", expected)
    assert [e["source"] for e in entries(cache)] == ["bake"]
    # arguments, argv[0] and the exit code as the binary's own
    usage = run(podman, wordstat, "a", "b", cache=cache, env={"BAKERY_TARGET": "x86_64_v3"}, network="none")
    assert (usage.returncode, usage.stderr) == (2, "usage: /usr/local/bin/wordstat [FILE]\n")


def test_without_a_volume_it_still_runs_and_says_where_it_keeps_the_bake(podman, wordstat, expected):
    cp = run(podman, wordstat, "-", env={"BAKERY_TARGET": "x86_64_v3"}, network="none")
    assert cp.returncode == 0 and cp.stdout == expected, cp.stderr
    (line,) = bake_lines(cp.stderr)
    assert line.endswith("kept in this container's own cache"), line


def test_a_read_only_cache_falls_back_to_a_private_folder_with_a_note(podman, wordstat, expected, tmp_path):
    cp = run(podman, wordstat, "-", env={"BAKERY_TARGET": "x86_64_v3", "BAKERY_QUIET": "0"}, network="none",
             extra=("-v", f"{tmp_path}:/var/cache/bakery:ro"))
    assert cp.returncode == 0 and cp.stdout == expected, cp.stderr
    assert cp.stderr.splitlines()[0].startswith("bakery: /var/cache/bakery is read-only: baking into the private folder")


def test_the_app_is_the_container_process_and_gets_its_signals(podman, wordstat, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    assert run(podman, wordstat, "/etc/hostname", cache=cache, env={"BAKERY_TARGET": "x86_64_v3"}).returncode == 0
    name = f"bakery-signal-{os.getpid()}"
    # A shell as PID 1 (as PID 1 the app would ignore SIGTERM, the kernel's rule, launcher or not;
    # this podman has no --init): it starts the stub and reports how its child ended.
    p = subprocess.Popen(["podman", "run", "--rm", "-i", "--name", name, "--network=none", "-v",
                          f"{cache}:/var/cache/bakery", "-e", "BAKERY_TARGET=x86_64_v3", "--entrypoint", "sh",
                          wordstat, "-c", "/usr/local/bin/wordstat -; echo exit=$?"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=podman)
    try:
        deadline = time.monotonic() + 60
        found: dict[str, str] = {}
        while time.monotonic() < deadline and not found:
            cp = subprocess.run(["podman", "exec", name, "sh", "-c",
                                 "for p in /proc/[0-9]*; do echo ${p#/proc/} $(readlink $p/exe); done"],
                                capture_output=True, text=True, env=podman)
            procs = dict(line.split(" ", 1) for line in cp.stdout.splitlines() if " " in line)
            found = {pid: exe for pid, exe in procs.items() if exe.endswith("/wordstat")}
            time.sleep(0.2)
        (pid, exe), = found.items()
        assert exe.startswith("/var/cache/bakery/v1/wordstat-1.0-"), exe
        assert not any("python" in e for e in procs.values()), procs  # exec'd: no launcher process left
        subprocess.run(["podman", "exec", name, "sh", "-c", f"kill -TERM {pid}"], capture_output=True, env=podman, check=True)
        out, err = p.communicate(timeout=60)
        assert out.strip().endswith("exit=143"), (out, err)  # 128 + SIGTERM: the app got it and died of it
    finally:
        p.kill()
        p.communicate()


def test_another_isa_is_one_line_and_exit_126(podman, wordstat):
    cp = run(podman, wordstat, env={"BAKERY_TARGET": "neoverse_v1"}, network="none", stdin="")
    assert cp.returncode == 126
    assert cp.stderr.startswith("bakery: this image is linux/amd64 (x86_64) and BAKERY_TARGET=neoverse_v1 is "
                                "aarch64 (neoverse_v1); the image has linux/amd64\n"), cp.stderr


def test_containers_started_at_once_on_one_cache_make_one_bake(podman, wordstat, expected, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    n = 6
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda _: run(podman, wordstat, "-", cache=cache, network="none",
                                           env={"BAKERY_TARGET": "x86_64_v2"}), range(n)))
    assert [r.returncode for r in runs] == [0] * n, [r.stderr for r in runs]
    assert all(r.stdout == expected for r in runs)
    assert sum(len(bake_lines(r.stderr)) for r in runs) == 1, [r.stderr for r in runs]
    assert len(entries(cache)) == 1 and not list((cache / "v1").glob(".tmp-*"))


def test_a_node_tag_in_the_registry_is_fetched_not_baked(podman, wordstat, engine, registry, expected, tmp_path):
    fresh(registry, "wordstat", "1.0-westmere")
    node = imagemod.bake(wordstat, engine, registry, "westmere")
    cache = tmp_path / "cache"
    cache.mkdir()
    cp = run(podman, wordstat, "-", cache=cache, env={"BAKERY_TARGET": "westmere"})
    assert (cp.returncode, cp.stderr, cp.stdout) == (0, "", expected)
    (entry,) = entries(cache)
    assert entry["source"] == f"{registry}/wordstat:1.0-westmere" and entry["target"] == "westmere"
    # the same bytes as the node tag's own binaries
    got = {name: digest for name, digest in entry["files"].items()}
    pulled = subprocess.run(["podman", "run", "--rm", "--pull=missing", "--tls-verify=false", "--entrypoint",
                             "sha256sum", node.ref, "/usr/local/bin/wordstat", "/usr/local/bin/libwordstat.so.1"],
                            capture_output=True, text=True, env=podman, check=True).stdout.split()
    assert {Path(pulled[i + 1]).name: "sha256:" + pulled[i] for i in (0, 2)} == got


def test_a_node_tag_from_another_plan_is_refused_and_baked_here(podman, wordstat, registry, tmp_path):
    """A node tag that does not say it was baked from this image's plan is never taken."""
    from bakery import oci

    reg = oci.Registry(registry)
    fresh(registry, "wordstat", "1.0-sandybridge")
    data, mt, digest = reg.get_manifest("wordstat", "1.0")  # the IR image itself: no plan digest on it
    reg.put_manifest("wordstat", "1.0-sandybridge", data, mt)
    cache = tmp_path / "cache"
    cache.mkdir()
    cp = run(podman, wordstat, "-", cache=cache, env={"BAKERY_TARGET": "sandybridge"})
    assert cp.returncode == 0, cp.stderr
    (line,) = bake_lines(cp.stderr)
    assert "was not baked from this image's plan" in line, line


def test_a_bake_in_the_container_is_pushed_for_the_next_node(podman, wordstat, registry, expected, tmp_path):
    fresh(registry, "wordstat", "1.0-ivybridge")
    one, two = tmp_path / "node1", tmp_path / "node2"
    one.mkdir()
    two.mkdir()
    first = run(podman, wordstat, "-", cache=one, env={"BAKERY_TARGET": "ivybridge", "BAKERY_PUSH": "1"})
    assert first.returncode == 0 and first.stdout == expected, first.stderr
    assert f"bakery: pushed {registry}/wordstat:1.0-ivybridge for the next node of this CPU type" in first.stderr
    second = run(podman, wordstat, "-", cache=two, env={"BAKERY_TARGET": "ivybridge"})
    assert (second.returncode, second.stderr, second.stdout) == (0, "", expected)
    assert entries(two)[0]["source"] == f"{registry}/wordstat:1.0-ivybridge"


def test_serve_bakes_once_for_many_nodes(podman, wordstat, registry, expected, tmp_path):
    fresh(registry, "wordstat", "1.0-nehalem")
    svc = Service(registry, tmp_path / "serve.log").start()
    try:
        n = 4
        caches = [tmp_path / f"node{i}" for i in range(n)]
        for c in caches:
            c.mkdir()
        with ThreadPoolExecutor(n) as pool:
            runs = list(pool.map(lambda c: run(podman, wordstat, "-", cache=c, env={
                "BAKERY_TARGET": "nehalem", "BAKERY_REGISTRY": f"http://{svc.addr}"}), caches))
        assert [r.returncode for r in runs] == [0] * n, [r.stderr for r in runs] + [svc.log()]
        assert all(r.stdout == expected for r in runs)
        assert sum(len(bake_lines(r.stderr)) for r in runs) == 0
        assert len([b for b in svc.bakes() if b.get("outcome") == "succeeded"]) == 1, svc.log()
        assert all(entries(c)[0]["source"] == f"{svc.addr}/wordstat:1.0-nehalem" for c in caches)
    finally:
        svc.stop()


def test_the_auto_job_runs_as_rendered(podman, wordstat, expected, tmp_path):
    """No cluster here: the rendered pod's one container, run with podman as a kubelet would, with
    the node's hostPath cache."""
    host_cache = tmp_path / "node-cache"
    (job,) = validate_k8s(k8s.render_job(wordstat, args=["/etc/hostname"], cache_host_path=str(host_cache)))
    spec = job["spec"]["template"]["spec"]
    (app,) = spec["containers"]
    assert "initContainers" not in spec and app["image"] == wordstat
    (mount,) = app["volumeMounts"]
    host_cache.mkdir()
    for _ in range(2):
        cp = run(podman, app["image"], *app["args"], network="none", stdin=None,
                 extra=("-v", f"{spec['volumes'][0]['hostPath']['path']}:{mount['mountPath']}", "-e",
                        "BAKERY_TARGET=x86_64_v3"))
        assert cp.returncode == 0 and cp.stdout.startswith("words: "), cp.stderr
    assert len(entries(host_cache)) == 1  # the node's second pod: no bake, no fetch
