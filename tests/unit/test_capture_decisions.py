"""The audit of silent fallbacks (docs/capture.md), at the unit layer: the wrapper's events for
what it runs as it is, and what assemble() makes of them (a decision in the plan, or an error).
No compiler: the events are written here, and the wrapper runs ``true`` and ``false``."""

import hashlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from bakery import plan as planmod
from bakery.capture import wrapper
from bakery.errors import BakeryError, PlanRefused

RECIPE = SimpleNamespace(name="audit", version="1.0", digest="sha256:" + "0" * 64, entrypoint=["prog"], test=[],
                         runtime_packages=[], preserve_flags=[], preserve_libs=[], outputs=["prog"])
TOOLCHAIN = SimpleNamespace(major=16, version="16.0.6", triple="x86_64-pc-linux-gnu", family="x86_64")


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class Capture:
    """A store with the files events name, and assemble() over the events."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.root, self.store, self.bundle = tmp_path / "src", tmp_path / "store", tmp_path / "bundle"
        for d in ("bc", "native", "files"):
            (self.store / d).mkdir(parents=True)
        self.root.mkdir()
        self.events: list[dict] = []

    def compile(self, src: str, **kw) -> dict:
        bc = _sha("bc " + src)
        (self.store / "bc" / f"{bc}.bc").write_bytes(b"BC")
        self.events.append({"event": "compile", "obj": _sha("obj " + src), "bc": bc, "src": src, "lang": "c",
                            "flags": ["-O2"], "cwd": ".", "out": src[:-2] + ".o", **kw})
        return {"module": bc}

    def native(self, name: str, event: dict | None = None) -> dict:
        sha = _sha("native " + name)
        (self.store / "native" / sha).write_bytes(b"\x7fELF")
        if event is not None:
            self.events.append({**event, "obj": sha})
        return {"object": sha, "name": name}

    def link(self, output: str, args: list, *, shared: bool = False) -> None:
        self.events.append({"event": "link", "driver": "c", "cwd": ".", "output": output, "sha": _sha("out " + output),
                            "shared": shared, "args": args})

    def assemble(self, outputs=("prog",)) -> dict:
        recipe = SimpleNamespace(**{**vars(RECIPE), "outputs": list(outputs)})
        plan = planmod.assemble(recipe, TOOLCHAIN, self.events, root=self.root, outdir=self.root, store=self.store,
                                bundle=self.bundle)
        planmod.save(plan, self.bundle)  # as the capture does: the schema and the trust checks
        return plan


@pytest.fixture
def cap(tmp_path):
    return Capture(tmp_path)


def _decisions(plan: dict) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["what"]): d for d in plan["capture"]["decisions"]}


# -- what the plan records --------------------------------------------------------------------------

def test_native_objects_say_what_made_them(cap):
    cap.events += [{"event": "native", "why": "assembly-output", "src": "gen.c", "out": "gen.s"},
                   {"event": "link", "driver": "c", "cwd": ".", "output": "part.o", "sha": _sha("native part.o"),
                    "shared": False, "args": ["-r"]}]
    args = [cap.compile("main.c"),
            cap.native("add.o", {"event": "native", "why": "assembly", "lang": "asm-cpp", "src": "add.S"}),
            cap.native("gen.o", {"event": "native", "why": "assembly", "lang": "asm", "src": "gen.s"}),
            cap.native("f.o", {"event": "native", "why": "language", "lang": "fortran", "src": "f.f90"}),
            cap.native("conftest.o", {"event": "probe", "kind": "conftest", "out": "conftest.o"}),
            cap.native("part.o"), cap.native("ext.o")]
    cap.link("prog", args)
    got = _decisions(cap.assemble())
    whys = {what: d["why"] for (kind, what), d in got.items() if kind == "native-object"}
    assert whys == {"add.S": "assembly", "gen.s": "assembly made with -S from gen.c, then assembled",
                    "f.f90": "fortran, which is not in capture.languages",
                    "conftest.o": "made by a conftest probe, which bakery runs as it is",
                    "part.o": "the output of a link of its own (-r?), whose inputs are not linked as bitcode",
                    "ext.o": whys["ext.o"]}
    assert whys["ext.o"].startswith("not compiled through bakery's wrappers")
    assert all(d["links"] == ["prog"] and d["object"] for d in got.values())


def test_system_libraries_are_recorded_per_link(cap):
    cap.link("libx.so", [cap.compile("x.c"), {"given": "-lz", "as": "system-library"}, "-shared"], shared=True)
    cap.link("prog", [cap.compile("main.c"), {"shared": _sha("out libx.so"), "path": "libx.so"},
                      {"given": "-lz", "as": "system-library"},
                      {"given": "/usr/lib/x86_64-linux-gnu/libm.a", "as": "system-library"}])
    plan = cap.assemble()
    got = _decisions(plan)
    assert set(got) == {("system-library", "-lz"), ("system-library", "/usr/lib/x86_64-linux-gnu/libm.a")}
    assert got["system-library", "-lz"]["links"] == ["libx.so", "prog"]
    assert "-lz" in plan["links"][1]["args"] and "/usr/lib/x86_64-linux-gnu/libm.a" in plan["links"][1]["args"]


def test_module_fallbacks_are_recorded_for_the_modules_outputs_use(cap):
    used = cap.compile("used.c", fallbacks=[{"step": "simplify", "why": "opt exited 1"},
                                            {"step": "variant", "level": "x86_64_v3", "why": "its compile exited 1"}])
    cap.compile("unused.c", fallbacks=[{"step": "untarget", "why": "llvm-as exited 1"}])
    cap.link("prog", [used])
    got = cap.assemble()["capture"]["decisions"]
    assert [d["why"] for d in got if d["what"] == "used.c"] == [
        "the capture's half of its pipeline failed (opt exited 1): the bake runs all of it",
        "no x86_64_v3 capture (its compile exited 1): bakes for x86_64_v3 take the next lower one"]
    assert [d["what"] for d in got] == ["used.c", "used.c"], "a module no output links was recorded"


def test_probes_are_counted_by_kind(cap):
    cap.events += [{"event": "probe", "kind": "conftest"}] * 3 + [{"event": "probe", "kind": "cmake", "out": "x"}]
    cap.link("prog", [cap.compile("main.c")])
    assert cap.assemble()["capture"]["probes"] == {"cmake": 1, "conftest": 3}


def test_the_typed_plan_reads_them_and_an_older_plan_has_none(cap):
    cap.events.append({"event": "probe", "kind": "meson"})
    cap.link("prog", [cap.compile("main.c"), cap.native("a.o"), {"given": "-lm", "as": "system-library"}, "-I."])
    cap.assemble()
    plan = planmod.load(cap.bundle)
    assert [(d.kind, d.what, d.links) for d in plan.decisions] == [("native-object", "a.o", ("prog",)),
                                                                   ("system-library", "-lm", ("prog",))]
    assert dict(plan.probes) == {"meson": 1}
    assert [(d.flag, d.link) for d in plan.dropped] == [("-I.", "prog")]
    assert plan.to_json()["capture"]["decisions"] == [d.to_json() for d in plan.decisions]
    doc = json.loads((cap.bundle / "plan.json").read_text())
    for key in ("decisions", "probes"):  # as captures before this one wrote it
        del doc["capture"][key]
    old = planmod.parse(json.dumps(doc).encode())
    assert old.decisions == () and dict(old.probes) == {} and len(old.dropped) == 1


def test_a_decision_of_another_shape_is_refused(cap):
    cap.link("prog", [cap.compile("main.c")])
    plan = cap.assemble()
    plan["capture"]["decisions"] = [{"kind": "anything", "what": "x", "why": "y", "links": []}]
    with pytest.raises(PlanRefused, match="decisions"):
        planmod.validate(plan)


# -- what fails the capture --------------------------------------------------------------------------

def test_a_declared_output_whose_link_was_not_recorded_fails_the_capture(cap):
    cap.link("prog", [cap.compile("main.c")])  # an earlier link of the same path must not stand in
    cap.events.append({"event": "error", "step": "link", "output": "prog", "sha": None,
                       "what": "recording the link of prog: ValueError('bad archive')"})
    with pytest.raises(BakeryError, match=r"the link of prog could not be recorded: .*bad archive"):
        cap.assemble()


def test_a_library_an_output_needs_whose_link_was_not_recorded_fails_the_capture(cap):
    cap.events.append({"event": "error", "step": "link", "output": "libx.so", "sha": _sha("out libx.so"),
                       "what": "recording the link of libx.so: OSError()"})
    cap.link("prog", [cap.compile("main.c"), {"shared": _sha("out libx.so"), "path": "libx.so"}])
    with pytest.raises(BakeryError, match="the link of libx.so could not be recorded"):
        cap.assemble()


def test_a_failed_recording_of_a_link_no_output_needs_is_no_error(cap):
    cap.events.append({"event": "error", "step": "link", "output": "tool", "sha": None, "what": "x"})
    cap.link("prog", [cap.compile("main.c")])
    assert [link["output"] for link in cap.assemble()["links"]] == ["prog"]


@pytest.mark.parametrize("item,message", [
    ({"given": "libfoo.so", "as": "not-elf"}, "neither an object, an archive nor a shared library"),
    ({"given": "/home/me/lib/libfoo.so", "as": "system-library"}, "would be dropped"),
    ({"given": "-l/etc/passwd", "as": "system-library"}, "would be dropped"),
])
def test_a_link_input_the_bake_would_drop_or_refuse_fails_the_capture(cap, item, message):
    cap.link("prog", [cap.compile("main.c"), item])
    with pytest.raises(BakeryError, match=message):
        cap.assemble()


def test_a_module_no_compile_made_fails_the_capture(cap):
    cap.link("prog", [{"module": _sha("stray")}])
    with pytest.raises(BakeryError, match="no compile of this capture made"):
        cap.assemble()


def test_an_output_made_by_a_call_run_as_it_was_says_so(cap):
    cap.events.append({"event": "native", "why": "stdin", "src": "-", "out": "prog"})
    cap.link("other", [cap.compile("main.c")])
    with pytest.raises(BakeryError, match="not produced by a link") as e:
        cap.assemble()
    assert "ran as it was (stdin compile)" in (e.value.hint or "")


# -- the wrapper's side --------------------------------------------------------------------------------

@pytest.fixture
def capture(tmp_path, monkeypatch):
    """A wrapper whose compilers are ``true``, its store and build root in tmp_path, run from the root."""
    store, root, shims = tmp_path / "store", tmp_path / "src", tmp_path / "shims"
    for d in (store / "objs", store / "native", store / "tmp", root, shims):
        d.mkdir(parents=True)
    (shims / "config.json").write_text(json.dumps({"store": str(store), "root": str(root),
                                                   "compilers": {"c": "true", "c++": "true", "fortran": None}}))
    monkeypatch.chdir(root)
    return wrapper.Capture(str(shims), "cc")


def _events(capture) -> list[dict]:
    path = Path(capture.store) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_failed_link_recording_names_its_output(capture, monkeypatch):
    Path("prog").write_bytes(b"\x7fELF linked")

    def fail(args, out):
        raise ValueError("bad archive")

    monkeypatch.setattr(capture, "record_link", fail)
    assert capture.link(wrapper.parse(["-o", "prog", "main.o"]), ["-o", "prog", "main.o"]) == 0  # the build goes on
    [event] = _events(capture)
    assert event == {"event": "error", "step": "link", "output": "prog", "sha": _sha_file("prog"),
                     "what": "recording the link of prog: ValueError('bad archive')"}


def _sha_file(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_failed_rewrite_is_returned_for_the_unit_to_record(capture, tmp_path):
    (tmp_path / "m.bc").write_bytes(b"BC")
    assert capture.in_place(str(tmp_path / "m.bc"), "simplify", lambda tmp: ["false"], "opt") == "opt exited 1"
    assert capture.in_place(str(tmp_path / "m.bc"), "simplify", lambda tmp: ["cp", "/dev/null", tmp], "opt") is None
    assert not _events(capture), "a failure went to an event no one reads"


@pytest.mark.parametrize("args,cwd,kind", [
    (["-c", "conftest.c"], ".", "conftest"),
    (["-o", "/dev/null", "x.c"], ".", "dev-null"),
    (["-c", "x.c", "-o", "x.o"], "CMakeFiles/CMakeScratch/TryCompile-1", "cmake"),
    (["-c", "x.c", "-o", "meson-private/x.o"], ".", "meson"),
    (["-c", "x.c", "-o", "x.o"], ".", None),
])
def test_probe_kinds(capture, monkeypatch, args, cwd, kind):
    Path(cwd).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(cwd)
    assert capture.probe_kind(wrapper.parse(args)) == kind


def test_a_call_run_as_it_was_says_what_it_made(capture):
    assert capture.main(["-O2", "-S", "gen.c", "-o", "gen.s"]) == 0
    assert capture.main(["-x", "c", "-c", "-", "-o", "in.o"]) == 0
    assert capture.main(["-c", "m.ll", "-o", "m.o"]) == 0
    assert capture.main(["-E", "x.c"]) == 0 and capture.main(["--version"]) == 0  # nothing comes of them
    assert [(e["event"], e["why"], e["src"], e["out"]) for e in _events(capture)] == [
        ("native", "assembly-output", "gen.c", "gen.s"), ("native", "stdin", "-", "in.o"),
        ("native", "no-source", "m.ll", "m.o")]


def test_link_inputs_left_as_given_say_why(capture, tmp_path):
    outside = tmp_path / "sys"
    outside.mkdir()
    (outside / "libz.a").write_bytes(b"!<arch>\n")
    Path("libscript.so").write_text("INPUT(libscript.so.1)\n")
    assert capture.input_item(str(outside / "libz.a")) == {"given": str(outside / "libz.a"), "as": "system-library"}
    assert capture.input_item("libscript.so") == {"given": "libscript.so", "as": "not-elf"}
    assert capture.input_item("nothing.o") == {"given": "nothing.o", "as": "not-a-file"}


def test_a_probe_names_the_object_it_made(capture):
    subprocess.run(["sh", "-c", "printf x > conftest.o"], check=True)
    assert capture.main(["-c", "conftest.c", "-o", "conftest.o"]) == 0
    assert _events(capture) == [{"event": "probe", "kind": "conftest", "out": "conftest.o", "obj": _sha_file("conftest.o")}]


def test_the_summary_says_each_kind_once_and_the_ones_worth_reading(cap):
    from bakery.cli.capture import decision_lines
    from bakery.cli.inspect import capture_notes, capture_text

    cap.events += [{"event": "probe", "kind": "conftest"}] * 2
    cap.link("prog", [cap.compile("main.c", fallbacks=[{"step": "simplify", "why": "opt exited 1"}]),
                      cap.native("add.o", {"event": "native", "why": "assembly", "lang": "asm", "src": "add.s"}),
                      cap.native("ext.o"), {"given": "-lm", "as": "system-library"}, "-I."])
    cap.assemble()
    plan = planmod.load(cap.bundle)
    lines = decision_lines(plan)
    assert [h for h, _ in lines] == ["probes", "native", "", "", "libraries", "fallback", "", "dropped"]
    text = "\n".join(t for _, t in lines)
    assert "2 run as they were, not captured (conftest 2)" in text and "add.s (prog): assembly" in text
    assert "ext.o (prog): not compiled through bakery's wrappers" in text and "1 from the system" in text
    assert "main.c: the capture's half of its pipeline failed (opt exited 1)" in text
    assert capture_text(plan)[0] == "  probes:    2 run as they were, not captured (conftest 2)"
    notes = capture_notes(plan)
    assert notes["probes"] == {"conftest": 2} and len(notes["decisions"]) == 4 and notes["dropped"][0]["flag"] == "-I."
    json.dumps(notes)  # inspect --json prints it


def test_a_system_linker_script_by_path_fails_the_capture_with_the_library_to_link_instead(cap):
    """Debian's libm.so is a linker script: CMake's find_library gives its path, which every bake refuses."""
    cap.link("prog", [cap.compile("main.c"), {"given": "/usr/lib/x86_64-linux-gnu/libm.so", "as": "not-elf"}])
    with pytest.raises(BakeryError, match="a linker script") as e:
        cap.assemble()
    assert e.value.hint == "link it as -lm (as the build's compiler would find it)"
