"""The plan is untrusted: anything beyond compiling and linking its own files is refused before anything runs."""

import copy
import json
import shutil

import pytest

from bakery import plan as planmod
from bakery.cli import main
from bakery.errors import PlanRefused
from bakery.plan import assembly, trust


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
    plan = planmod.load(bundle)
    assert plan.to_json() == json.loads((bundle / "plan.json").read_text())  # the model keeps all of it


def test_toolchain_version_defaults_to_the_major(bundle):
    edit(bundle, lambda p: p["toolchain"].pop("version"))
    tc = planmod.load(bundle).toolchain
    assert tc.version == f"{tc.llvm_major}.0.0" and "version" not in tc.to_json()


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


def test_capture_writes_no_plan_the_bake_refuses(bundle):
    """The capture's last step (assembly.save) checks the plan as the bake does: a recipe that got
    past the loader's check of preserve.flags still cannot leave a refused plan.json behind."""
    before = (bundle / "plan.json").read_bytes()
    plan = json.loads(before)
    assembly.save(copy.deepcopy(plan), bundle)  # an accepted plan is written
    plan["preserve"]["flags"].append("-D_FILE_OFFSET_BITS=64")
    with pytest.raises(PlanRefused, match="preserved flag '-D_FILE_OFFSET_BITS=64': not in the allow-list"):
        assembly.save(plan, bundle)
    assert json.loads((bundle / "plan.json").read_bytes()) == json.loads(before)
    assert not (bundle / "plan.tmp").exists()


@pytest.mark.parametrize("flag", ["-O3", "-ffast-math", "-fPIC", "-mavx2", "-fno-omit-frame-pointer", "-g"])
def test_allowed_compile_flags(flag):
    assert planmod.compile_flag_problem(flag) is None


@pytest.mark.parametrize("flag", ["-lm", "-l:libfoo.so.1", "-Wl,--as-needed", "-Wl,-soname,libx.so.1",
                                  "-Wl,-rpath,$ORIGIN", "-Wl,-z,relro,-z,now", "-L/usr/lib/x86_64-linux-gnu",
                                  "-pthread", "-shared", "/usr/lib/x86_64-linux-gnu/libz.so"])
def test_allowed_link_flags(flag):
    assert planmod.link_flag_problem(flag) is None


# -- flags that write or read files, or open LLVM's own options (each refused before anything runs)

FILE_FLAGS = [
    "-ftime-trace=/tmp/bakery-trace", "-ftime-trace", "-fproc-stat-report=/tmp/bakery-stat", "-fproc-stat-report",
    "-mllvm", "-module-summary-dot-file=/tmp/x.dot", "-fstack-usage", "-gsplit-dwarf",
    "-fbasic-block-sections=list=/etc/passwd", "-fprofile-list=/etc/passwd", "-fprofile-instr-generate",
    "-fprofile-sample-use=/etc/passwd", "-fsave-optimization-record", "-foptimization-record-file=/tmp/x",
    "-fcrash-diagnostics-dir=/tmp", "-fmodules-cache-path=/tmp", "-fdebug-compilation-dir=/tmp",
    "-fthinlto-index=/etc/passwd", "-fsanitize=address", "-fsanitize-ignorelist=/etc/passwd",
    "-fxray-attr-list=/etc/passwd", "-fembed-bitcode", "-fvisibility=/etc/passwd", "-ffp-contract=/tmp",
    "-mprefer-vector-width=/tmp", "-mcmodel=large/../x", "-fno-/etc/passwd", "-mavx2=/tmp", "-mstack-protector-guard-symbol=x",
    "-fpic\n", "-O2\x00",
]


@pytest.mark.parametrize("flag", FILE_FLAGS)
def test_file_and_llvm_option_flags_are_refused(bundle, tmp_path, capsys, flag):
    edit(bundle, lambda p: first_module(p)["flags"].append(flag))
    err = refused(bundle, tmp_path, capsys, "plan refused")
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag", ["-ftime-trace=/tmp/bakery-trace", "-fproc-stat-report=/tmp/x", "-mllvm"])
def test_file_flags_in_links_and_preserved_flags_are_refused(bundle, tmp_path, capsys, flag):
    edit(bundle, lambda p: p["links"][0]["args"].append(flag))
    refused(bundle, tmp_path, capsys, flag.split("=")[0])
    edit(bundle, lambda p: (p["links"][0]["args"].remove(flag), p["preserve"]["flags"].append(flag)))
    refused(bundle, tmp_path, capsys, "preserved flag")


@pytest.mark.parametrize("flag", ["-fvisibility=hidden", "-fcf-protection=full", "-ffp-contract=fast", "-fno-plt",
                                  "-fstack-protector-strong", "-fstack-clash-protection", "-fno-strict-aliasing",
                                  "-fwrapv", "-fno-rtti", "-fno-exceptions", "-msse4.2", "-mno-avx512f", "-mfma",
                                  "-mbmi2", "-mfpmath=sse", "-mno-red-zone", "-mstackrealign", "-fopenmp",
                                  "-mprefer-vector-width=256", "-mcmodel=medium", "-fno-common", "-ftrapping-math"])
def test_codegen_flags_stay_allowed(flag):
    assert planmod.compile_flag_problem(flag) is None


def test_every_flag_the_capture_keeps_is_allowed():
    """bake_flags (capture) keeps these on purpose: the plan's allow-list must not drop them."""
    from bakery.capture import wrapper

    for flag in wrapper.BAKE_KEEP_F:
        assert planmod.compile_flag_problem(flag) is None, flag


def test_allowed_codegen_flags_bake(bundle, tmp_path):
    """A plan using many of the allowed flags is accepted and bakes with the real clang."""
    flags = ["-fvisibility=default", "-fno-strict-aliasing", "-fwrapv", "-fstack-protector-strong",
             "-fcf-protection=full", "-ffp-contract=on", "-fno-plt", "-mno-red-zone", "-mfpmath=sse", "-msse4.2"]
    edit(bundle, lambda p: first_module(p)["flags"].extend(flags))
    rc = main(["bake", str(bundle), "--target", "x86_64_v2", "--output", str(tmp_path / "out"), "-q"])
    assert rc == 0 and (tmp_path / "out" / "pi").is_file()


# -- linker scripts and host files through the link line -----------------------------------------

LINK_ATTACKS = [
    "-Wl,-T,/etc/hostname", "-Wl,-T/etc/hostname", "-Wl,--script=/etc/hostname", "-Wl,--script,/etc/hostname",
    "-Wl,/etc/hostname", "-Wl,/usr/lib/os-release", "-Wl,--as-needed,/usr/lib/os-release",
    "-Wl,-rpath,/usr/lib,/etc/hostname", "-Wl,--version-script,/etc/hostname", "-Wl,--version-script=/etc/hostname",
    "-Wl,--dynamic-list=/etc/hostname", "-Wl,-Map,/tmp/map", "-Wl,--Map=/tmp/map", "-Wl,--reproduce=/tmp/r.tar",
    "-Wl,--why-extract=/tmp/x", "-Wl,-L/etc", "-Wl,libfoo.so", "-Wl,-soname,libx.so,libevil.so",
    "/usr/libexec/libfoo.so", "/optX/libfoo.so", "/usr/lib/../../etc/libx.so", "/usr/lib/os-release",
    "-L/usr/libexec", "-L/optX", "-L/usr/lib/../../etc", "-l:../x.so", "-l:/etc/hostname", "-l:os-release",
    "-l../x", "-Wl,-rpath,/usr/libexec", "-Wl,-rpath,/optX", "-Wl,-z,execstack,-z,/etc/x", "-Wl,--hash-style=/x",
    "-Wl,-soname", "-Wl,-rpath",
]


@pytest.mark.parametrize("flag", LINK_ATTACKS)
def test_link_lines_reading_host_files_are_refused(bundle, tmp_path, capsys, flag):
    edit(bundle, lambda p: p["links"][0]["args"].append(flag))
    err = refused(bundle, tmp_path, capsys, "plan refused")
    assert len(err.strip().splitlines()) == 1, err
    assert HOSTNAME not in err  # nothing ran, so nothing echoed a host file


HOSTNAME = open("/etc/hostname").read().strip() or "(empty)"


def test_libtool_split_rpath_is_checked_with_its_value(bundle, tmp_path, capsys):
    edit(bundle, lambda p: p["links"][0]["args"].extend(["-Wl,-rpath", "-Wl,/usr/lib/x86_64-linux-gnu"]))
    planmod.load(bundle)
    edit(bundle, lambda p: p["links"][0]["args"].extend(["-Wl,-rpath", "-Wl,/home/user/lib"]))
    refused(bundle, tmp_path, capsys, "/home/user/lib")


@pytest.mark.parametrize("path", ["/usr/lib/x86_64-linux-gnu/libc.so", "/usr/lib/x86_64-linux-gnu/libm.so"])
def test_text_file_as_a_library_path_is_refused_at_bake(bundle, tmp_path, capsys, path):
    """libc.so is a GNU ld script: lld would read the files it names. Only ELF and ar are taken."""
    import os
    if not os.path.isfile(path):
        pytest.skip(f"{path} not on this machine")
    edit(bundle, lambda p: p["links"][0]["args"].append(path))
    planmod.load(bundle)  # the name looks like a library: refused by its first bytes, at bake
    refused(bundle, tmp_path, capsys, "neither ELF nor an ar archive")


@pytest.fixture
def local_lib_entries():
    """Odd entries in /usr/local/lib (a system library folder): a dangling symlink, a folder."""
    import os
    import uuid
    base = f"/usr/local/lib/bakery-test-{uuid.uuid4().hex[:8]}"
    if not os.access("/usr/local/lib", os.W_OK):
        pytest.skip("/usr/local/lib is not writable")
    os.symlink("/nonexistent/libgone.so", base + "-dangling.so")
    os.mkdir(base + "-dir.so")
    yield base
    os.unlink(base + "-dangling.so")
    os.rmdir(base + "-dir.so")


@pytest.mark.parametrize("kind,why", [("dangling", "No such file"), ("dir", "not a regular file")])
def test_dangling_or_folder_library_path_is_refused_at_bake(bundle, tmp_path, capsys, local_lib_entries, kind, why):
    edit(bundle, lambda p: p["links"][0]["args"].append(f"{local_lib_entries}-{kind}.so"))
    refused(bundle, tmp_path, capsys, why)


def test_system_elf_library_path_still_bakes(bundle, tmp_path):
    import glob
    libs = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libz.so*") + glob.glob("/lib/x86_64-linux-gnu/libm.so.6"))
    if not libs:
        pytest.skip("no system ELF library to link")
    edit(bundle, lambda p: p["links"][0]["args"].append(libs[-1]))
    assert main(["bake", str(bundle), "-t", "x86_64", "-o", str(tmp_path / "out"), "-q"]) == 0


def test_system_dirs_match_whole_components():
    assert planmod.system_dir("/usr/lib/x86_64-linux-gnu") and planmod.system_dir("/usr/lib")
    assert planmod.system_dir("/opt/intel/lib") and planmod.system_dir("/lib64")
    for bad in ("/usr/libexec", "/optX", "/usr/lib64x/a", "/usr/lib/../bin", "usr/lib", "/usr/lib\n", "/lib\x00"):
        assert not planmod.system_dir(bad), bad


# -- assembly that reads the baking node's files -------------------------------------------------

def _capture_c(tmp_path, toolchain, code: str):
    from helpers import write_project

    from bakery import capture as capturemod
    from bakery import recipe as recipemod

    recipe = recipemod.load(write_project(tmp_path, "asm", {
        "main.c": code, "Makefile": "app: main.c\n\t$(CC) -O2 -o app main.c\n",
    }, "build:\n  system: make\n  options: [app]\noutputs: [app]\n"))
    capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    return tmp_path / "bundle"


MAIN = "int main(void) { return 0; }\n"
ASM_ATTACKS = {
    "module-incbin": '__asm__(".section .rodata\\n.incbin \\"/etc/hostname\\"\\n.text");\n' + MAIN,
    "module-INCBIN": '__asm__(".section .rodata\\n.INCBIN \\"/etc/hostname\\"\\n.text");\n' + MAIN,
    "module-include": '__asm__(".include \\"/dev/null\\"");\n' + MAIN,  # assembles at capture too
    "module-irp": '__asm__(".irp n,bin\\n.inc\\\\n \\"/etc/hostname\\"\\n.endr");\n' + MAIN,
    "module-macro": '__asm__(".macro m\\n.endm");\n' + MAIN,
    "module-altmacro": '__asm__(".altmacro");\n' + MAIN,
    "inline-incbin": 'int main(void) { __asm__ volatile(".pushsection .rodata\\n.incbin \\"/etc/hostname\\"\\n'
                     '.popsection"); return 0; }\n',
    "inline-irpc": 'int main(void) { __asm__ volatile(".irpc c,x\\n.endr"); return 0; }\n',
    "deplibs": '#pragma comment(lib, "/etc/hostname")\n' + MAIN,
}


@pytest.mark.parametrize("name", sorted(ASM_ATTACKS))
def test_assembly_reading_host_files_is_refused(tmp_path, toolchain, capsys, name):
    bundle = _capture_c(tmp_path, toolchain, ASM_ATTACKS[name])
    err = refused(bundle, tmp_path, capsys, "plan refused: module main.c:")
    assert len(err.strip().splitlines()) == 1, err


def test_harmless_inline_asm_still_bakes(tmp_path, toolchain):
    bundle = _capture_c(tmp_path, toolchain, 'int main(void) { __asm__ volatile("" ::: "memory");'
                                             ' __asm__ volatile("nop"); return 0; }\n')
    assert main(["bake", str(bundle), "-t", "x86_64", "-o", str(tmp_path / "out"), "-q"]) == 0
    assert (tmp_path / "out" / "app").is_file()


@pytest.mark.parametrize("ir,bad", [
    ('module asm ".incbin \\22/etc/passwd\\22"', True),
    ('module asm "\\2Einc\\62in \\22/x\\22"', True),   # escaped by hand: LLVM reads it as .incbin
    ('  call void asm sideeffect inteldialect ".Include \\22x\\22", ""()', True),
    ('  call void asm sideeffect ".inc${0:c} \\22/etc/passwd\\22", "i"(ptr @bin)', True),
    ('  call void asm sideeffect ".Ltmp${:uid}: nop", ""()', False),
    ('  %1 = call i32 asm "bswap $0", "=r,0"(i32 %0)', False),
    ('!llvm.dependent-libraries = !{!0}', True),
    ('@s = constant [9 x i8] c".incbin \\22\\00"', False),   # data, not assembly
])
def test_asm_problem_reads_llvm_text(ir, bad):
    from bakery.bake import asm_problem
    assert (asm_problem(ir + "\n") is not None) is bad


def test_clang_and_lld_run_inside_the_work_tree(bundle, tmp_path, toolchain, monkeypatch):
    """Nothing of a bake may resolve against the caller's folder: every tool runs in the work tree."""
    from bakery import bake as bakemod
    from bakery import proc
    from bakery import target as targetmod

    seen, real = [], proc.run
    def spy(argv, **kw):
        seen.append((argv[0], kw.get("cwd")))
        return real(argv, **kw)
    monkeypatch.setattr(proc, "run", spy)
    monkeypatch.chdir(tmp_path)
    target = targetmod.resolve("x86_64", compiler_version=toolchain.version, family=toolchain.family)
    bakemod.bake(bundle, planmod.load(bundle), toolchain, target, tmp_path / "out")
    assert {tool.rsplit("/", 1)[-1] for tool, _ in seen} >= {"llvm-dis", "clang"}
    for tool, cwd in seen:
        assert cwd is not None and "bakery-bake-" in str(cwd), (tool, cwd)


# -- version scripts stay, linker scripts go --------------------------------------------------------

VERSIONED = {
    "lib.c": "int api(void) { return 42; }\nint hidden(void) { return 1; }\n",
    "main.c": "int api(void);\nint main(void) { return api() != 42; }\n",
    "lib.map": "V1 { global: api; local: *; };\n",
    "Makefile": "all: app\nlibv.so: lib.c lib.map\n\t$(CC) -O2 -fPIC -shared -Wl,--version-script=lib.map -o libv.so lib.c\n"
                "app: main.c libv.so\n\t$(CC) -O2 -o app main.c -L. -lv -Wl,-rpath,'$$ORIGIN'\n",
}


@pytest.fixture(scope="module")
def versioned_bundle(tmp_path_factory, toolchain):
    from helpers import write_project

    from bakery import capture as capturemod
    from bakery import recipe as recipemod

    tmp = tmp_path_factory.mktemp("versioned")
    recipe = recipemod.load(write_project(tmp, "versioned", VERSIONED,
                                          "build:\n  system: make\n  options: [all]\noutputs: [app, libv.so]\n"))
    capturemod.capture(recipe, tmp / "bundle", toolchain)
    return tmp / "bundle"


@pytest.fixture
def vbundle(versioned_bundle, tmp_path):
    shutil.copytree(versioned_bundle, tmp_path / "bundle")
    return tmp_path / "bundle"


def _file_item(plan):
    return next(a for link in plan["links"] for a in link["args"] if isinstance(a, dict) and "file" in a)


def test_version_script_is_kept_and_bakes(vbundle, tmp_path):
    plan = planmod.load(vbundle)
    assert [a.prefix for link in plan.links for a in link.args if isinstance(a, planmod.FileRef)] == ["--version-script="]
    assert main(["bake", str(vbundle), "-t", "x86_64", "-o", str(tmp_path / "out"), "-q"]) == 0
    import subprocess
    syms = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / "out" / "libv.so")],
                          capture_output=True, text=True).stdout
    assert "api" in syms and "hidden" not in syms, syms


@pytest.mark.parametrize("prefix", ["--script=", "-T", "--scrip=", "--version-script", "--version-script=/etc/x,"])
def test_bundle_file_as_linker_script_is_refused(vbundle, tmp_path, capsys, prefix):
    edit(vbundle, lambda p: _file_item(p).update(prefix=prefix))
    refused(vbundle, tmp_path, capsys, "plan refused")


@pytest.mark.parametrize("at", [5, -1, 1.0, True])
def test_file_position_out_of_range_is_refused(vbundle, tmp_path, capsys, at):
    edit(vbundle, lambda p: _file_item(p).update(at=at))
    err = refused(vbundle, tmp_path, capsys, "plan refused")
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text", ['INCLUDE "/etc/hostname"\nV1 { global: api; local: *; };\n',
                                  'V1 { global: api; local: *; };\nINCLUDE /etc/hostname\n'])
def test_version_script_that_includes_is_refused_at_bake(vbundle, tmp_path, capsys, text):
    import hashlib
    def go(p):
        item = _file_item(p)
        sha = hashlib.sha256(text.encode()).hexdigest()
        (vbundle / "files" / sha).write_text(text)
        p["files"][sha] = {"path": f"files/{sha}", "sha256": sha}
        item["file"] = sha
    edit(vbundle, go)
    refused(vbundle, tmp_path, capsys, "INCLUDE")


def test_file_item_for_a_linker_script_is_dropped_by_the_capture():
    """A build's own linker script (-T) is left out of the plan, with a note, not refused at bake."""
    assert assembly._file_item_problem({"file": "a" * 64, "wl": ["-T", "x.ld"], "at": 1, "prefix": ""})
    assert assembly._file_item_problem({"file": "a" * 64, "wl": ["--script=x"], "at": 0, "prefix": "--script="})
    assert not assembly._file_item_problem({"file": "a" * 64, "wl": ["--version-script", "x"], "at": 1, "prefix": ""})


# -- shapes that used to crash the loader or the bake (found by mutating plans) -------------------

def _second_link(p, **kw):
    link = copy.deepcopy(p["links"][0])
    link.update({"id": "L9", "install": "pi2", **kw})
    p["links"].append(link)


CRASHERS = {
    "nul-in-output": lambda p: p["links"][0].update(output="pi\x00x"),
    "nul-in-link-arg": lambda p: p["links"][0]["args"].append("-lm\x00"),
    "nul-in-key": lambda p: p["capture"].update({"a\x00": 1}),
    "nul-in-capture": lambda p: p["capture"].update(note="x\x00"),
    "newline-in-install": lambda p: p["links"][0].update(install="pi\n"),
    "newline-in-sha": lambda p: p["modules"].update({k + "\n": v for k, v in list(p["modules"].items())[:1]}),
    "long-output": lambda p: p["links"][0].update(output="x" * 300),
    "long-output-path": lambda p: p["links"][0].update(output="/".join(["abcdefgh"] * 200)),
    "same-output": lambda p: _second_link(p, output=p["links"][0]["output"]),
    "output-is-other-folder": lambda p: _second_link(p, output=p["links"][0]["output"] + "/sub"),
    "output-dot": lambda p: p["links"][0].update(output="."),
    "output-trailing-slash": lambda p: p["links"][0].update(output="pi/"),
    "same-install": lambda p: _second_link(p, output="other", install=p["links"][0]["install"]),
    "same-id": lambda p: _second_link(p, output="other", id=p["links"][0]["id"]),
    "float-llvm-major": lambda p: p["toolchain"].update(llvm_major=16.0),
    "float-schema-version": lambda p: p.update(schemaVersion=1.0),
    "bool-schema-version": lambda p: p.update(schemaVersion=True),
    "deep-capture": lambda p: p["capture"].update(deep=json.loads("[" * 100 + "]" * 100)),
    "dotdot-triple": lambda p: p["toolchain"].update(triple=".."),
    "bad-version": lambda p: p["toolchain"].update(version="16.0.6; rm"),
    "huge-flag-list": lambda p: first_module(p).update(flags=["-O2"] * 5000),
    "long-flag": lambda p: first_module(p)["flags"].append("-O" + "2" * 5000),
    "list-plan": lambda p: (p.clear(), p.update({"x": []})),
}


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_malformed_plans_are_refused_in_one_line(bundle, tmp_path, capsys, name):
    edit(bundle, CRASHERS[name])
    err = refused(bundle, tmp_path, capsys, "plan refused")
    assert len(err.strip().splitlines()) == 1, err


def test_install_names_differing_by_case_are_fine(bundle):
    edit(bundle, lambda p: _second_link(p, output="other", install="PI"))
    planmod.load(bundle)


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"a":' * 100000 + "1" + "}" * 100000, "[1] x", "\xff"])
def test_json_that_is_too_deep_or_broken_is_refused(bundle, tmp_path, capsys, text):
    (bundle / "plan.json").write_bytes(text.encode("latin-1"))
    refused(bundle, tmp_path, capsys, "plan refused")


def test_oversized_plan_is_refused_unread(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trust, "MAX_PLAN_BYTES", 1000)
    refused(bundle, tmp_path, capsys, "larger than")


def test_plan_bytes_from_a_registry_are_parsed_the_same_way():
    with pytest.raises(PlanRefused, match="nests too deep"):
        planmod.parse(b"[" * 100000 + b"]" * 100000)
    with pytest.raises(PlanRefused, match="not an object"):
        planmod.parse(b"[]")
