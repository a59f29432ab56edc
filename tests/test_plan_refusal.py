"""The plan is untrusted: anything beyond compiling and linking its own files is refused before anything runs."""

import copy
import json
import shutil

import pytest

from bakery import plan as planmod
from bakery.cli import main
from bakery.errors import PlanRefused


@pytest.fixture(scope="module")
def pi_bundle(builds):
    return builds.bundle("pi")


@pytest.fixture
def bundle(pi_bundle, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(pi_bundle, dest)
    return dest


def edit(bundle, fn):
    plan = json.loads((bundle / "plan.json").read_text())
    fn(plan)
    (bundle / "plan.json").write_text(json.dumps(plan))


def first_module(plan):
    return next(iter(plan["modules"].values()))


def refused(bundle, tmp_path, capsys, match):
    out = tmp_path / "out"
    rc = main(["bake", str(bundle), "--target", "x86_64", "--output", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert match in err
    assert "Traceback" not in err
    assert not out.exists(), "nothing may be written for a refused plan"
    return err


def test_untouched_plan_loads(bundle):
    planmod.load(bundle)


def test_tampered_bitcode_is_refused(bundle, tmp_path, capsys):
    sha = next(iter(json.loads((bundle / "plan.json").read_text())["modules"]))
    bc = bundle / "bitcode" / f"{sha}.bc"
    data = bytearray(bc.read_bytes())
    data[-1] ^= 1
    bc.write_bytes(bytes(data))
    refused(bundle, tmp_path, capsys, "tampered")


def test_bitcode_swapped_for_symlink_is_refused(bundle, tmp_path, capsys):
    sha = next(iter(json.loads((bundle / "plan.json").read_text())["modules"]))
    bc = bundle / "bitcode" / f"{sha}.bc"
    bc.unlink()
    bc.symlink_to("/etc/passwd")
    refused(bundle, tmp_path, capsys, "plan refused")


@pytest.mark.parametrize("flag", [
    "-fplugin=/tmp/evil.so", "-fpass-plugin=/tmp/evil.so", "-Xclang", "-B/tmp/evil", "-specs=/tmp/x",
    "@/tmp/args", "-o/etc/passwd", "-march=native", "-fprofile-use=/etc/shadow", "-I/etc", "--config=/x",
])
def test_rejected_module_flags(bundle, tmp_path, capsys, flag):
    edit(bundle, lambda p: first_module(p)["flags"].append(flag))
    err = refused(bundle, tmp_path, capsys, "plan refused")
    assert flag in err


@pytest.mark.parametrize("flag", [
    "-Wl,--plugin=/tmp/evil.so", "-Wl,-plugin,/tmp/evil.so", "-fuse-ld=/tmp/ld", "-B/tmp", "@/tmp/rsp",
    "-specs=/tmp/specs", "-o", "-L/home/user/lib", "/home/user/libevil.so", "-Wl,-rpath,/home/x",
    "-Xlinker", "-Wl,--wrap=malloc", "-Wl,-z,execstack,--no-such", "../../etc/passwd",
])
def test_rejected_link_flags(bundle, tmp_path, capsys, flag):
    edit(bundle, lambda p: p["links"][0]["args"].append(flag))
    err = refused(bundle, tmp_path, capsys, "plan refused")
    assert flag in err


def test_module_path_outside_bundle(bundle, tmp_path, capsys):
    def go(p):
        sha, m = next(iter(p["modules"].items()))
        m["path"] = "../../../etc/passwd"
    edit(bundle, go)
    refused(bundle, tmp_path, capsys, "plan refused")


def test_output_path_outside_bundle(bundle, tmp_path, capsys):
    edit(bundle, lambda p: p["links"][0].update(output="../../escape"))
    refused(bundle, tmp_path, capsys, "outside the bundle")


@pytest.mark.parametrize("name", ["../pi", "sub/pi", ".hidden", ""])
def test_install_name_must_be_plain(bundle, tmp_path, capsys, name):
    edit(bundle, lambda p: p["links"][0].update(install=name))
    refused(bundle, tmp_path, capsys, "install name")


def test_unknown_key_is_refused(bundle, tmp_path, capsys):
    edit(bundle, lambda p: p.update(hooks=["rm -rf /"]))
    refused(bundle, tmp_path, capsys, "hooks")


def test_newer_llvm_bitcode_is_refused(bundle, tmp_path, capsys):
    edit(bundle, lambda p: p["toolchain"].update(llvm_major=99))
    out = tmp_path / "out"
    assert main(["bake", str(bundle), "-t", "x86_64", "-o", str(out), "-q"]) == 1
    assert "LLVM 99" in capsys.readouterr().err
    assert not out.exists()


def test_preserved_flags_are_checked(bundle, tmp_path, capsys):
    edit(bundle, lambda p: p["preserve"]["flags"].append("-fplugin=x.so"))
    refused(bundle, tmp_path, capsys, "-fplugin=x.so")


@pytest.mark.parametrize("flag", ["-O3", "-ffast-math", "-fPIC", "-mavx2", "-fno-omit-frame-pointer", "-g"])
def test_allowed_compile_flags(flag):
    assert planmod.compile_flag_problem(flag) is None


@pytest.mark.parametrize("flag", ["-lm", "-l:libfoo.so.1", "-Wl,--as-needed", "-Wl,-soname,libx.so.1",
                                  "-Wl,-rpath,$ORIGIN", "-Wl,-z,relro,-z,now", "-L/usr/lib/x86_64-linux-gnu",
                                  "-pthread", "-shared", "/usr/lib/x86_64-linux-gnu/libz.so"])
def test_allowed_link_flags(flag):
    assert planmod.link_flag_problem(flag) is None
