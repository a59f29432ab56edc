"""Warm LLVM tools (bakery.bake.warm) with the real clang and opt: what a forked tool writes is
what a fresh start writes, failures are failures, and a server that cannot start or dies makes
the tool run afresh rather than fail the bake."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bakery import bake as bakemod
from bakery import plan as planmod
from bakery import proc
from bakery.bake import warm
from bakery.errors import CommandFailed

SOURCE = "int sq(int x) { return x * x; }\nint main(int c, char **v) { (void)v; return sq(c); }\n"


def _bitcode(toolchain, tmp_path: Path) -> Path:
    src = tmp_path / "t.c"
    src.write_text(SOURCE)
    bc = tmp_path / "t.bc"
    proc.run([toolchain.clang, "-O2", "-Xclang", "-disable-llvm-optzns", "-emit-llvm", "-c", str(src), "-o", str(bc)])
    return bc


@pytest.fixture
def tools(toolchain, tmp_path):
    w = warm.WarmTools(toolchain.clang, tmp_path, (toolchain.clang, toolchain.tool("opt")))
    yield w
    w.close()


def test_forked_compiles_write_what_fresh_ones_write(toolchain, tools, tmp_path):
    bc = _bitcode(toolchain, tmp_path)
    data = bc.read_bytes()
    cold, hot = tmp_path / "cold.o", tmp_path / "hot.o"
    argv = ["-c", "-x", "ir", "-", "-march=x86-64-v3", "-O2"]
    proc.run([toolchain.clang, *argv, "-o", str(cold)], input=data, text=False, cwd=tmp_path)
    tools.run([toolchain.clang, *argv, "-o", str(hot)], input=data, text=False, cwd=tmp_path)
    assert hot.read_bytes() == cold.read_bytes()
    # opt reading stdin and writing stdout, as text: the same bytes too
    opt = [toolchain.tool("opt"), "-passes=default<O2>", "-S", "-", "-o", "-"]
    assert tools.run(opt, input=data, text=False).stdout == proc.run(opt, input=data, text=False).stdout
    assert tools.served == 2 and not tools.cold


def test_output_buffered_until_exit_is_not_lost(toolchain, tools):
    """clang --version prints through LLVM's buffered outs(), flushed only as the process ends."""
    assert tools.run([toolchain.clang, "--version"]).stdout == proc.run([toolchain.clang, "--version"]).stdout
    assert tools.served == 1


def test_a_failing_compile_fails_with_its_message(toolchain, tools, tmp_path):
    with pytest.raises(CommandFailed) as e:
        tools.run([toolchain.clang, "-c", "-x", "ir", "-", "-o", str(tmp_path / "x.o")], input="this is not IR\n")
    assert e.value.returncode == 1 and "expected top-level entity" in str(e.value)
    # the server is still good for the next request
    assert "clang version" in tools.run([toolchain.clang, "--version"]).stdout
    assert tools.served == 2 and not tools.cold


def test_requests_from_several_threads(toolchain, tools, tmp_path):
    bc = _bitcode(toolchain, tmp_path)
    expected = tmp_path / "ref.o"
    proc.run([toolchain.clang, "-c", str(bc), "-o", str(expected)])

    def one(i: int) -> bytes:
        out = tmp_path / f"o{i}.o"
        tools.run([toolchain.clang, "-c", str(bc), "-o", str(out)], cwd=tmp_path)
        return out.read_bytes()

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(one, range(12))) == {expected.read_bytes()}
    assert tools.served == 12 and len(tools.started) <= 4


def test_a_shim_that_does_not_load_runs_the_tool_afresh(toolchain, tmp_path):
    w = warm.WarmTools(toolchain.clang, tmp_path, (toolchain.clang,))
    w.shim = tmp_path / "missing.so"   # ld.so ignores it: clang starts as itself, with no input, and exits
    try:
        assert "clang version" in w.run([toolchain.clang, "--version"]).stdout
        assert w.served == 0 and w.cold == {toolchain.clang}
    finally:
        w.close()


def test_a_server_that_dies_is_replaced_by_a_fresh_start(toolchain, tools, tmp_path):
    tools.run([toolchain.clang, "--version"])
    (server,) = tools.started
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    assert "clang version" in tools.run([toolchain.clang, "--version"]).stdout  # afresh, then a new server
    assert server not in tools.started
    assert "clang version" in tools.run([toolchain.clang, "--version"]).stdout
    assert tools.served == 2


def test_off_for_small_bakes_and_by_setting(toolchain, tmp_path, monkeypatch):
    assert warm.WarmTools.for_bake(toolchain.clang, tmp_path, (), warm.MIN_MODULES - 1) is None
    monkeypatch.setenv("BAKERY_FORKSERVER", "0")
    assert warm.WarmTools.for_bake(toolchain.clang, tmp_path, (), 1000) is None
    monkeypatch.setenv("BAKERY_FORKSERVER", "1")
    w = warm.WarmTools.for_bake(toolchain.clang, tmp_path, (), 1000)
    assert w is not None and w.shim is not None
    w.close()


def test_a_bake_with_warm_tools_writes_the_same_binaries(builds, toolchain, tmp_path, monkeypatch):
    bundle = builds.bundle("wordstat")
    plan = planmod.load(bundle)
    target = builds.target("x86_64_v3")
    monkeypatch.setattr(warm, "MIN_MODULES", 0)
    monkeypatch.setenv("BAKERY_FORKSERVER", "0")
    cold = bakemod.bake(bundle, plan, toolchain, target, tmp_path / "cold")
    assert cold.timings is not None and cold.timings.warm_tools is None
    monkeypatch.setenv("BAKERY_FORKSERVER", "1")
    hot = bakemod.bake(bundle, plan, toolchain, target, tmp_path / "hot")
    assert hot.timings is not None
    used = hot.to_json()["timings"]["warm_tools"]   # what bakery bake --json says
    assert used["forked"] >= len(plan.modules) and used["servers"] >= 1 and used["started_afresh"] == [], used
    assert cold.outputs.keys() == hot.outputs.keys()
    for name in cold.outputs:
        assert Path(hot.outputs[name]).read_bytes() == Path(cold.outputs[name]).read_bytes(), name
