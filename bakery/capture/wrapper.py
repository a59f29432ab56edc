"""Compiler wrapper that stands in for cc/c++/gcc/g++ during a capture.

Run as ``python3 -I -S wrapper.py SHIMDIR ROLE ARGS...`` by the shims bakery
writes; it must therefore use the standard library only and start fast.

For each C/C++ translation unit it makes *pre-optimization* bitcode
(``-O2 -Xclang -disable-llvm-optzns``: no ``optnone``, no passes run yet, so the
bake can run the whole pipeline with the target known), keeps it in the store,
and compiles that bitcode to the native object the build asked for, so the build
system goes on as usual. Links run for real and are recorded with every input
resolved to what it was made of (bitcode module, native object, archive member).
Each event is one ``write()`` of one JSON line, so parallel make cannot
interleave them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:  # part of bakery (tests, the plan)
    from bakery.capture.attrs import features_of, untarget
    from bakery.capture.flags import (
        HOST_CPU_PREFIXES,
        LINKER_FILE_OPTIONS,
        LINKER_VALUE_OPTIONS,
        PIPELINE_FLAGS,
        sha256_file,
        split_level,
    )
except ImportError:  # run as a script, python3 -I -S wrapper.py: the tables from this file's own folder
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from attrs import features_of, untarget  # type: ignore
    from flags import (  # type: ignore
        HOST_CPU_PREFIXES,
        LINKER_FILE_OPTIONS,
        LINKER_VALUE_OPTIONS,
        PIPELINE_FLAGS,
        sha256_file,
        split_level,
    )

# Flags followed by a separate value argument.
TAKES_VALUE = {
    "-o", "-I", "-D", "-U", "-include", "-imacros", "-isystem", "-idirafter", "-iquote",
    "-isysroot", "--sysroot", "-MF", "-MT", "-MQ", "-MJ", "-x", "-Xlinker", "-Xclang",
    "-Xassembler", "-Xpreprocessor", "-L", "-l", "-u", "-T", "-z", "-e", "-target",
    "-iprefix", "-iwithprefix", "-iwithprefixbefore", "-imultilib", "--param", "-arch",
    "-aux-info", "-dumpbase", "-dumpdir", "-G", "-ccc-gcc-name", "--target",
}
# Preprocessor / dependency / diagnostics flags: meaningless for codegen from IR.
FRONTEND_ONLY_PREFIXES = ("-I", "-D", "-U", "-M", "-W", "-std=", "-include", "-imacros",
                          "-isystem", "-idirafter", "-iquote", "-isysroot", "--sysroot",
                          "-iprefix", "-iwithprefix", "-pedantic", "-ansi", "-x", "-C", "-P",
                          "-H", "-fdiagnostics", "-fcolor-diagnostics", "-fno-color-diagnostics")
# The build host's CPU must not leak into the IR: the bake chooses the target.
SOURCE_LANG = {
    ".c": "c", ".i": "c",
    ".cc": "c++", ".cp": "c++", ".cxx": "c++", ".cpp": "c++", ".c++": "c++", ".C": "c++",
    ".CPP": "c++", ".ii": "c++",
    ".s": "asm", ".S": "asm-cpp", ".sx": "asm-cpp",
    ".f": "fortran", ".for": "fortran", ".f90": "fortran", ".f95": "fortran", ".f03": "fortran",
    ".f08": "fortran", ".F": "fortran", ".F90": "fortran", ".F95": "fortran",
}
X_LANG = {"c": "c", "c++": "c++", "assembler": "asm", "assembler-with-cpp": "asm-cpp",
          "f95": "fortran", "f77": "fortran", "f95-cpp-input": "fortran", "cpp-output": "c",
          "c++-cpp-output": "c++", "c-header": "header", "c++-header": "header", "ir": "ir"}
LINE_MARKER = re.compile(rb"^# \d+ .*\n", re.M)
OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Oz", "-Ofast", "-Og", "-O")



def under_configure() -> bool:
    """Whether a ``configure`` script is among this process's ancestors (Linux /proc)."""
    pid = os.getppid()
    for _ in range(64):
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False
        # "sh ./configure …" or "./configure …" (a shebang script shows its interpreter first)
        if any(os.path.basename(a) == b"configure" for a in argv[:2]):
            return True
        pid = int(stat[stat.rindex(b")") + 2:].split()[1])  # field 4: ppid (comm may hold spaces)
    return False

class Capture:
    def __init__(self, shimdir: str, role: str):
        with open(os.path.join(shimdir, "config.json")) as f:
            self.cfg = json.load(f)
        self.role = role
        self.store = self.cfg["store"]
        self.root = self.cfg["root"]
        self.mode = self.cfg.get("mode", "capture")
        self.lang = {"cc": "c", "c++": "c++", "fortran": "fortran"}[role]
        # A cross capture adds --target=TRIPLE to every compiler call, and lld to those that may
        # link: -fuse-ld on a compile-only call is an unused argument, an error under Meson's
        # -Werror=unused-command-line-argument (its cc.compiles() checks then answer "no").
        self.cross = [f for f in self.cfg.get("target_flags", []) if not f.startswith("-fuse-ld=")]
        self.ld = [f for f in self.cfg.get("target_flags", []) if f.startswith("-fuse-ld=")]
        # Debian's flang-new does not give the linker its runtime's folder: every call that may
        # link gets it, probes too (CMake's compiler check links a program).
        if self.lang == "fortran":
            self.ld = [*self.ld, *self.cfg.get("fortran_link_flags", [])]
        self.real = [self.cfg["compilers"][self.lang], *self.cross]

    def dialect(self, args: list[str]) -> None:
        """C compiles (probes too) are as permissive as Debian's gcc 12, unless the call asks for
        -Werror, as gcc then errors too (flags.PERMISSIVE_C; first, so the build's own -W win)."""
        if self.role == "cc" and "-Werror" not in args:
            self.real[1:1] = self.cfg.get("c_dialect", [])

    def command(self, parsed: dict) -> list[str]:
        """The real compiler for this call, with the linker flags when the call may link."""
        return [*self.real, *(self.ld if parsed["stage"] not in ("c", "E", "S", "M") else [])]

    # -- events ---------------------------------------------------------------
    def emit(self, event: dict) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        fd = os.open(os.path.join(self.store, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write() per event: atomic under O_APPEND
        finally:
            os.close(fd)

    def rel(self, path: str) -> str | None:
        """Path relative to the build root, or None when outside it."""
        p = os.path.realpath(path)
        root = os.path.realpath(self.root)
        if p == root:
            return "."
        if p.startswith(root + os.sep):
            return os.path.relpath(p, root)
        return None

    # -- entry ------------------------------------------------------------------
    def main(self, args: list[str]) -> int:
        self.dialect(args)
        if self.mode == "passthrough":
            return subprocess.call([*self.command(parse(args)), *args, *self.cfg.get("extra_flags", [])])
        parsed = parse(args)
        if parsed["stage"] in ("E", "M") or not (parsed["inputs"] or parsed["stdin"]):
            return subprocess.call([*self.command(parsed), *args])  # no object comes of it
        kind = self.probe_kind(parsed)
        if kind:
            return self.probe(parsed, args, kind)
        # What bakery cannot capture runs as it is, and says what it made (plan: capture.decisions).
        if parsed["stage"] == "S":
            return self.untouched(parsed, args, "assembly-output")
        if parsed["stdin"]:
            return self.untouched(parsed, args, "stdin")
        if parsed["stage"] == "c":
            return self.compile_only(parsed)
        return self.compile_and_link(parsed)

    def probe_kind(self, parsed: dict) -> str | None:
        """configure and CMake try_compile checks: which kind of probe the call is, or None."""
        out = parsed["output"] or ""
        if out == "/dev/null":
            return "dev-null"
        if os.path.basename(out).startswith("conftest"):
            return "conftest"
        # autoconf also compiles without -o ($CC -c conftest.c, $CC conftest.c).
        if not parsed["output"] and any(os.path.basename(s).startswith("conftest") for s, _ in parsed["sources"]):
            return "conftest"
        # CMake compiles its checks and compiler-id programs below CMakeFiles/;
        # real targets compile from the binary dir itself.
        if "/CMakeFiles/" in os.getcwd() + os.sep:
            return "cmake"
        # Meson's sanity checks and cc.compiles()/cc.links() run in <builddir>/meson-private/.
        if "/meson-private/" in os.path.join(os.getcwd(), out) + os.sep:
            return "meson"
        # Hand-written configure scripts name their probes as they like (zlib: ztest$$.c):
        # anything compiled while a configure script runs is a probe.
        return "configure" if under_configure() else None

    def probe(self, parsed: dict, args: list[str], kind: str) -> int:
        """Run a probe as it is; the event counts it, and names the object it made (the plan says
        so should that object end up in an output)."""
        rc = subprocess.call([*self.command(parsed), *args])
        event: dict = {"event": "probe", "kind": kind}
        out = parsed["output"]
        if out and out != "/dev/null":
            event["out"] = self.rel(out) or os.path.abspath(out)
            if rc == 0 and parsed["stage"] == "c" and os.path.isfile(out):
                event["obj"] = sha256_file(out)
        self.emit(event)
        return rc

    def untouched(self, parsed: dict, args: list[str], why: str) -> int:
        """Run a call bakery cannot capture as it is (-S, a source on standard input, a compile
        of no C/C++/Fortran/assembly source); the event says what it made, and from what."""
        rc = subprocess.call([*self.command(parsed), *args])
        if rc:
            return rc
        suffix = {"S": ".s", "c": ".o"}.get(parsed["stage"])
        if parsed["stdin"]:
            made = [("-", parsed["output"] or ("-" + suffix if suffix else "a.out"))]
        elif parsed["output"] or not suffix:
            first = parsed["sources"][0][0] if parsed["sources"] else parsed["inputs"][0]
            made = [(first, parsed["output"] or "a.out")]
        else:  # one output per source, named after it, here
            made = [(src, os.path.splitext(os.path.basename(src))[0] + suffix)
                    for src, _ in parsed["sources"] or [(i, "") for i in parsed["inputs"]]]
        for src, out in made:
            event = {"event": "native", "why": why, "src": src if src == "-" else self.rel(src) or os.path.abspath(src),
                     "out": self.rel(out) or os.path.abspath(out)}
            if parsed["stage"] == "c" and os.path.isfile(out):
                event["obj"] = sha256_file(out)
            self.emit(event)
        return 0

    # -- compiling --------------------------------------------------------------
    def compile_only(self, parsed: dict) -> int:
        sources = [(s, lang) for s, lang in parsed["sources"]]
        if parsed["output"] and len(sources) > 1:
            # One -o for several objects: the compiler refuses it, and the build fails.
            return subprocess.call([*self.real, *parsed["argv"]])
        if not sources:  # IR, a header (a precompiled one), a file of no known language
            return self.untouched(parsed, parsed["argv"], "no-source")
        for src, lang in sources:
            out = parsed["output"] or os.path.splitext(os.path.basename(src))[0] + ".o"
            rc = self.compile_one(parsed, src, lang, out)
            if rc:
                return rc
        return 0

    def compile_one(self, parsed: dict, src: str, lang: str, out: str) -> int:
        flags = parsed["flags"]
        if lang not in self.cfg.get("languages", ["c", "c++"]) or lang not in ("c", "c++", "fortran"):
            # Assembly, Fortran (unless enabled) and anything else stay native
            # objects; the link records them as such, and this event says why.
            rc = subprocess.call([*self.real, *flags, *parsed["xlang"](src), "-c", src, "-o", out])
            if rc == 0:
                self.emit({"event": "native", "why": "assembly" if lang.startswith("asm") else "language",
                           "lang": lang, "src": self.rel(src) or os.path.abspath(src), "obj": sha256_file(out)})
            return rc
        # What the capture fell back on for this unit (the bake still works, slower): in its record.
        fallbacks: list[dict] = []
        # 1. pre-optimization bitcode, written where the object goes so that
        #    -MD dependency files and their targets are named as the build expects.
        if lang == "fortran":
            # flang 16 has no -disable-llvm-optzns, but at -O0 it runs no LLVM
            # pass and, unlike clang, marks nothing optnone.
            fortran = self.cfg["compilers"]["fortran"]
            bc_flags = [f for f in capture_flags(flags, "-O0") if not f.startswith(OPT_LEVELS)] + ["-O0"]
            rc = subprocess.call([fortran, *self.cross, *bc_flags, *parsed["xlang"](src), "-c", "-emit-llvm", src, "-o", out])
        else:
            bc_flags = capture_flags(flags, self.cfg.get("opt", "-O2"))
            rc = subprocess.call([*self.real, *bc_flags, *parsed["xlang"](src), "-c", "-emit-llvm",
                                  "-Xclang", "-disable-llvm-optzns", src, "-o", out])
        if rc:
            return rc
        recorded = bake_flags(flags, self.cfg.get("opt", "-O2"))
        # 2. the target-independent half of -O2/-O3, once, here (bakery.passes)
        halves = self.halves(recorded, flags, os.path.getsize(out)) if lang != "fortran" else None
        if halves and (why := self.simplify(out, halves)):
            fallbacks.append({"step": "simplify", "why": why})
            halves = None
        # 3. the baseline target attributes out, once, here: the bake compiles this bitcode as it is
        untargeted = False
        if lang != "fortran" and self.cfg.get("untarget"):
            why = self.untarget(out, bc_flags)
            untargeted = why is None
            if why:
                fallbacks.append({"step": "untarget", "why": why})
        bc_sha = self.store_bitcode(out, move=True)
        bc_path = os.path.join(self.store, "bc", bc_sha + ".bc")
        variants: list[dict] = []
        macros: list[str] = []
        if lang != "fortran" and len(self.cfg.get("levels", [])) > 1:
            variants, macros = self.target_variants(parsed, src, bc_flags, halves, untargeted, fallbacks)
        # 4. the native object the build asked for, from that same bitcode
        #    (clang reads any IR; Fortran's own flags mean nothing to it).
        native = codegen_flags(flags, self.cfg.get("opt", "-O2")) if lang != "fortran" else recorded
        rc = self.codegen(bc_path, native, out, halves)
        if rc:
            return rc
        obj_sha = sha256_file(out)
        record: dict = {"bc": bc_sha, "src": self.rel(src) or os.path.abspath(src), "lang": lang,
                        "flags": recorded, "cwd": self.rel(os.getcwd())}
        if halves:
            record["stage"] = "simplified"
        if untargeted:
            record["untargeted"] = True
        if variants:
            record |= {"variants": variants, "macros": macros}
        if fallbacks:
            record["fallbacks"] = fallbacks
        self.save_record(obj_sha, record)
        self.emit({"event": "compile", "obj": obj_sha, **record, "out": self.rel(out) or os.path.abspath(out)})
        return 0

    def halves(self, recorded: list[str], flags: list[str], size: int) -> dict | None:
        """The capture's and the bake's halves of this unit's pipeline, or None (not split: also
        a unit whose pre-optimization bitcode has fewer than the recipe's simplify_min_bytes,
        for which an opt process at each bake costs more than the half it saves)."""
        split = self.cfg.get("split") or {}
        if size < split.get("min_bytes", 0):
            return None
        level = split_level([*recorded, *(f for f in flags if f in PIPELINE_FLAGS)])
        return split.get("levels", {}).get(level) if level else None

    def simplify(self, path: str, halves: dict) -> str | None:
        """The first half on the bitcode at ``path``, in place: None, else why not (the bitcode
        left as it was, pre-optimization: the bake then runs the whole pipeline)."""
        return self.in_place(path, "simplify", lambda tmp: [self.cfg["split"]["opt"], f"-passes={halves['simplify']}",
                                                          *halves["options"], path, "-o", tmp], "opt")

    def in_place(self, path: str, step: str, argv, tool: str, stdin: str | None = None) -> str | None:
        """``argv(tmp)`` writes a new ``path`` to ``tmp``, which then replaces it: None, else why
        not (``path`` left as it was) if it exits non-zero. The caller records the fallback."""
        tmp = f"{path}.{os.getpid()}.{step}"
        rc = subprocess.run(argv(tmp), input=stdin, text=True).returncode
        if rc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            return f"{tool} exited {rc}"
        os.replace(tmp, path)
        return None

    def untarget(self, path: str, bc_flags: list[str]) -> str | None:
        """The bitcode at ``path`` without its functions' baseline target attributes
        (bakery.capture.attrs), in place (the config has the tools): None, else why not (left as
        it was: the bake rewrites the attributes itself)."""
        tools = self.cfg["untarget"]
        baseline = self.baseline(bc_flags)
        if baseline is None:
            return "the baseline target attributes are unknown (clang's probe compile failed)"
        dis = subprocess.run([tools["dis"], path, "-o", "-"], capture_output=True, text=True)
        if dis.returncode:
            return f"llvm-dis exited {dis.returncode}"
        return self.in_place(path, "untarget", lambda tmp: [tools["as"], "-", "-o", tmp], "llvm-as",
                             stdin=untarget(dis.stdout, baseline))

    def baseline(self, bc_flags: list[str]) -> set[str] | None:
        """The target-features clang gives a function without target(...) under these flags:
        a probe's, cached in the store per set of -m and target flags."""
        key = [f for f in bc_flags if f.startswith(("-m", "--target", "-target"))]
        cache = os.path.join(self.store, "tmp", "baseline-" + hashlib.sha256(json.dumps(key).encode()).hexdigest())
        try:
            with open(cache) as f:
                return set(json.load(f))
        except (OSError, ValueError):
            pass
        cp = subprocess.run([self.cfg["compilers"]["c"], *self.cross, *key, "-O2", "-Xclang", "-disable-llvm-optzns",
                             "-S", "-emit-llvm", "-w", "-x", "c", "-", "-o", "-"],
                            input="int bakery_probe(void) { return 0; }\n", capture_output=True, text=True)
        if cp.returncode:
            return None
        features = features_of(cp.stdout)
        tmp = f"{cache}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(sorted(features), f)
        os.replace(tmp, cache)
        return features

    def codegen(self, bc_path: str, native: list[str], out: str, halves: dict | None) -> int:
        """The native object from the stored bitcode: the whole pipeline, or its second half and
        code generation when the first ran here."""
        clang = [self.cfg["compilers"]["c"], *self.cross, *native, "-w", "-c", "-x", "ir"]
        if not halves:
            return subprocess.call([*clang, bc_path, "-o", out])
        fd, tmp = tempfile.mkstemp(suffix=".bc", dir=os.path.join(self.store, "tmp"))
        os.close(fd)
        try:
            rc = subprocess.call([self.cfg["split"]["opt"], f"-passes={halves['finish']}", *halves["options"],
                                  bc_path, "-o", tmp])
            return rc or subprocess.call([*clang, tmp, "-Xclang", "-disable-llvm-passes", "-o", out])
        finally:
            os.unlink(tmp)

    def save_record(self, obj_sha: str, record: dict) -> None:
        """Links see only the native object, and two compiles can give byte-identical
        objects from different bitcode: libtool (and bzip2's Makefile) build each
        file with and without -fPIC, and on a PIE-by-default compiler the two often
        differ only in IR (dso_local). Keep the -fPIC one whatever the order (make
        -j): it is right in a shared library and still fine in an executable."""
        path = os.path.join(self.store, "objs", obj_sha + ".json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        pic = [f for f in record["flags"] if f in ("-fPIC", "-fpic", "-fno-PIC", "-fno-pic")]
        if pic and pic[-1] in ("-fPIC", "-fpic"):
            os.replace(tmp, path)  # always wins
            return
        try:
            os.link(tmp, path)  # only when no record exists yet
        except FileExistsError:
            pass
        os.unlink(tmp)

    def store_bitcode(self, path: str, move: bool) -> str:
        sha = sha256_file(path)
        dest = os.path.join(self.store, "bc", sha + ".bc")
        if not os.path.exists(dest):
            tmp = dest + f".{os.getpid()}.tmp"
            (shutil.move if move else shutil.copyfile)(path, tmp)
            os.replace(tmp, dest)
        elif move:
            os.unlink(path)
        return sha

    def target_variants(self, parsed: dict, src: str, bc_flags: list[str], halves: dict | None,
                        untargeted: bool, fallbacks: list[dict]) -> tuple[list[dict], list[str]]:
        """Does this unit's preprocessed code depend on the target (#ifdef __AVX2__ ...)?

        Preprocess it for the generic target and for the highest level; when
        they differ, for every level, and capture one bitcode per distinct
        result. Returns the variants (lowest first) and the macros it tests; a
        check or a level that failed is added to ``fallbacks`` (bakes for it take
        the next lower capture).
        """
        levels = self.cfg["levels"]
        pp_flags = without_dependency_flags(bc_flags)
        xl = parsed["xlang"](src)

        def preprocess(extra: list[str]) -> bytes:
            cp = subprocess.run([*self.real, *pp_flags, *extra, *xl, "-E", "-w", src, "-o", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            # Line markers move with the number of predefined macros: not code.
            return LINE_MARKER.sub(b"", cp.stdout) if cp.returncode == 0 else b""

        generic = preprocess([])
        if not generic:
            fallbacks.append({"step": "detect", "why": "preprocessing it failed: not checked for target-dependent code"})
            return [], []
        top = preprocess(levels[-1]["flags"])
        if not generic or generic == top:
            return [], []
        variants, previous = [], generic
        for level in levels[1:]:
            text = top if level is levels[-1] else preprocess(level["flags"])
            if not text:
                fallbacks.append({"step": "variant", "level": level["name"], "why": "preprocessing it failed"})
            elif text != previous:
                fd, tmp = tempfile.mkstemp(suffix=".bc", dir=os.path.join(self.store, "tmp"))
                os.close(fd)
                rc = subprocess.call([*self.real, *pp_flags, *level["flags"], *xl, "-c", "-emit-llvm", "-w",
                                      "-Xclang", "-disable-llvm-optzns", src, "-o", tmp])
                why = f"its compile exited {rc}" if rc else None
                if not why and halves:
                    why = self.simplify(tmp, halves)
                if not why and untargeted:  # as the unit itself
                    why = self.untarget(tmp, [*bc_flags, *level["flags"]])
                if why:
                    fallbacks.append({"step": "variant", "level": level["name"], "why": why})
                    os.unlink(tmp)
                else:
                    variants.append({"level": level["name"], "bc": self.store_bitcode(tmp, move=True)})
            previous = text or previous
        return variants, self.macros_tested(src, pp_flags, xl)

    def macros_tested(self, src: str, pp_flags: list[str], xl: list[str]) -> list[str]:
        """Which of the levels' feature macros the unit's own files (the source
        and the build tree's headers it includes) mention."""
        names = self.cfg.get("level_macros", [])
        cp = subprocess.run([*self.real, *pp_flags, *xl, "-M", "-w", src], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
        files = {src} | {f for f in cp.stdout.replace("\\\n", " ").split()[1:] if self.rel(f) is not None}
        found: set[str] = set()
        for f in files:
            try:
                text = open(f, errors="replace").read()
            except OSError:
                continue
            found.update(n for n in names if n in text)
        return sorted(found)

    def compile_and_link(self, parsed: dict) -> int:
        """``cc -o prog a.c b.o -lm``: compile each source alone, then link."""
        tmpdir = tempfile.mkdtemp(prefix="cc-", dir=os.path.join(self.store, "tmp"))
        try:
            objs = {}
            for i, (src, lang) in enumerate(parsed["sources"]):
                obj = os.path.join(tmpdir, f"{i}-{os.path.splitext(os.path.basename(src))[0]}.o")
                rc = self.compile_one(parsed, src, lang, obj)
                if rc:
                    return rc
                objs[src] = obj
            link_args = [objs.get(a, a) for a in parsed["link_argv"]]
            return self.link(parsed, link_args)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    # -- linking ----------------------------------------------------------------
    def link(self, parsed: dict, link_args: list[str]) -> int:
        rc = subprocess.call([*self.command(parsed), *link_args])
        if rc:
            return rc
        out = parsed["output"] or "a.out"
        try:
            self.record_link(link_args, out)
        except Exception as e:  # never fail the user's build because of bookkeeping: the capture
            outp = os.path.abspath(out)  # fails instead, if a declared output needs this link
            try:
                sha = sha256_file(outp)
            except OSError:
                sha = None
            self.emit({"event": "error", "step": "link", "output": self.rel(outp) or outp, "sha": sha,
                       "what": f"recording the link of {out}: {e!r}"})
        return 0

    def record_link(self, args: list[str], out: str) -> None:
        args = merge_linker_options(args)
        items: list = []
        lib_dirs: list[str] = []
        static = False
        prev_wl = ""
        i = 0
        # First pass: -L dirs, needed to resolve -l anywhere on the line.
        j = 0
        while j < len(args):
            a = args[j]
            if a == "-L" and j + 1 < len(args):
                lib_dirs.append(args[j + 1]); j += 2; continue
            if a.startswith("-L"):
                lib_dirs.append(a[2:])
            j += 1
        while i < len(args):
            a = args[i]
            nxt = args[i + 1] if i + 1 < len(args) else None
            if a == "-o":
                i += 2; continue
            if a.startswith("-o") and len(a) > 2 and not a.startswith("-order"):
                i += 1; continue
            if a in ("-Wl,-Bstatic", "-static"):
                static = True
            elif a == "-Wl,-Bdynamic":
                static = False
            if a == "-L" and nxt is not None:
                a, i = "-L" + nxt, i + 1
            if a.startswith("-L"):
                d = a[2:]
                if self.rel(d) is None:
                    items.append(a)
                i += 1; continue
            if a == "-l" and nxt is not None:
                a, i = "-l" + nxt, i + 1
            if a.startswith("-l"):
                found = self.find_lib(a[2:], lib_dirs, static)
                items.append(self.input_item(found) if found else {"given": a, "as": "system-library"})
                i += 1; continue
            if a == "-Xlinker" and nxt is not None:
                a, i = "-Wl," + nxt, i + 1
            if a == "-z" and nxt is not None:  # the driver's -z KEYWORD (zstd: -z noexecstack)
                a, i = "-Wl,-z," + nxt, i + 1
            if a.startswith("-Wl,"):
                items.append(self.linker_item(a, prev_wl))
                prev_wl = a.split(",")[-1]
                i += 1; continue
            if a in TAKES_VALUE and nxt is not None:
                items.append(a); items.append(nxt)
                i += 2; continue
            if a.startswith("-") or a == "":
                items.append(a)
                i += 1; continue
            items.append(self.input_item(a))
            i += 1
        outp = os.path.abspath(out)
        self.emit({
            "event": "link", "driver": self.lang, "cwd": self.rel(os.getcwd()),
            "output": self.rel(outp) or outp, "sha": sha256_file(outp),
            "shared": "-shared" in args, "args": items,
        })

    def find_lib(self, name: str, dirs: list[str], static: bool) -> str | None:
        """Resolve -lNAME against the build tree's -L dirs (others are system libs)."""
        if name.startswith(":"):
            names = [name[1:]]
        else:
            names = [f"lib{name}.a"] if static else [f"lib{name}.so", f"lib{name}.a"]
        for d in dirs:
            if self.rel(d) is None:
                continue
            for n in names:
                p = os.path.join(d, n)
                if os.path.exists(p):
                    return p
        return None

    def linker_item(self, a: str, prev: str = ""):
        """-Wl,...: build-tree dirs become $ORIGIN; build-tree files (version
        scripts) travel with the plan."""
        parts = a[4:].split(",")
        out = []
        for p in parts:
            key, eq, val = p.partition("=")
            path = val if eq else p
            if ":" in path and path.startswith("/"):  # an rpath list
                dirs = []
                for d in path.split(":"):
                    d = "$ORIGIN" if d and self.rel(d) is not None else d
                    if d and d not in dirs:
                        dirs.append(d)
                out.append((key + "=" if eq else "") + ":".join(dirs))
                continue
            if path and os.path.exists(path) and self.rel(path) is not None:
                if os.path.isdir(path):
                    out.append((key + "=" if eq else "") + "$ORIGIN")
                    continue
                option = key if eq else (out[-1] if out else prev)
                if option not in LINKER_FILE_OPTIONS:
                    out.append(p)
                    continue
                sha = self.keep(path, "files")
                return {"file": sha, "wl": parts, "at": len(out), "prefix": key + "=" if eq else ""}
            out.append(p)
        return "-Wl," + ",".join(out)

    def keep(self, path: str, kind: str) -> str:
        sha = sha256_file(path)
        dest = os.path.join(self.store, kind, sha)
        if not os.path.exists(dest):
            tmp = dest + f".{os.getpid()}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return sha

    def input_item(self, path: str):
        """A link input as a plan item; one left as it was given is ``{"given": path, "as": why}``,
        for the plan to record (a system library) or refuse (a linker script)."""
        if not os.path.isfile(path):
            return {"given": path, "as": "not-a-file"}  # an option's value the wrapper does not know?
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic in (b"!<arch>\n", b"!<thin>\n"):
            if self.rel(path) is None:  # a system archive: linked from the system at bake time too
                return {"given": path, "as": "system-library"}
            return {"archive": os.path.basename(path), "members": [self.member_item(n, data) for n, data in read_archive(path)]}
        if magic[:4] == b"\x7fELF":
            with open(path, "rb") as f:
                etype = int.from_bytes(f.read(18)[16:18], "little")
            if etype == 3:  # ET_DYN: a shared library
                if self.rel(path) is None:
                    return {"given": path, "as": "system-library"}
                return {"shared": sha256_file(path), "path": self.rel(path)}
            return self.object_item(path)
        return {"given": path, "as": "not-elf"}  # a linker script, or text: the bake cannot link it

    def object_item(self, path: str):
        sha = sha256_file(path)
        rec = os.path.join(self.store, "objs", sha + ".json")
        if os.path.exists(rec):
            return {"module": json.load(open(rec))["bc"]}
        return {"object": self.keep(path, "native"), "name": os.path.basename(path)}

    def member_item(self, name: str, data: bytes):
        sha = hashlib.sha256(data).hexdigest()
        rec = os.path.join(self.store, "objs", sha + ".json")
        if os.path.exists(rec):
            return {"module": json.load(open(rec))["bc"]}
        dest = os.path.join(self.store, "native", sha)
        if not os.path.exists(dest):
            with open(dest + ".tmp", "wb") as f:
                f.write(data)
            os.replace(dest + ".tmp", dest)
        return {"object": sha, "name": name}


def merge_linker_options(args: list[str]) -> list[str]:
    """``-Wl,-soname -Wl,libx.so.1`` (libtool's style) -> ``-Wl,-soname,libx.so.1``,
    and ``-Xlinker A -Xlinker B`` likewise, so each option travels with its value."""
    norm: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-Xlinker" and i + 1 < len(args):
            a = "-Wl," + args[i + 1]
            i += 1
        if norm and a.startswith("-Wl,") and norm[-1].startswith("-Wl,") \
                and norm[-1].split(",")[-1] in LINKER_VALUE_OPTIONS:
            norm[-1] += "," + a[4:]
        else:
            norm.append(a)
        i += 1
    return norm


def read_archive(path: str) -> list[tuple[str, bytes]]:
    """Members of a System V / GNU ``ar`` archive (regular or thin)."""
    with open(path, "rb") as f:
        data = f.read()
    thin = data.startswith(b"!<thin>\n")
    pos, names, members = 8, b"", []
    while pos + 60 <= len(data):
        hdr = data[pos:pos + 60]
        name = hdr[:16].decode().rstrip()
        size = int(hdr[48:58].decode().strip())
        body_at = pos + 60
        if name == "//":
            names = data[body_at:body_at + size]
        elif name in ("/", "/SYM64/"):
            pass
        else:
            if name.startswith("/") and name[1:].isdigit():
                off = int(name[1:])
                end = names.index(b"\n", off)
                name = names[off:end].decode().rstrip("/")
            else:
                name = name.rstrip("/")
            if thin:
                member_path = os.path.join(os.path.dirname(path), name)
                with open(member_path, "rb") as mf:
                    members.append((os.path.basename(name), mf.read()))
                pos = body_at  # thin members have no body in the archive
                continue
            members.append((name, data[body_at:body_at + size]))
        pos = body_at + size + (size & 1)
    return members


def without_dependency_flags(flags: list[str]) -> list[str]:
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f in ("-MF", "-MT", "-MQ", "-MJ"):
            skip = True
        elif not f.startswith("-M"):
            out.append(f)
    return out


def capture_flags(flags: list[str], default_opt: str) -> list[str]:
    """Flags for the bitcode compile: host CPU dropped, never -O0 (optnone)."""
    out = [f for f in flags if not f.startswith(HOST_CPU_PREFIXES) and f not in ("-flto", "-flto=thin", "-flto=full")
           and not f.startswith("-flto=")]
    opts = [f for f in out if f.startswith(OPT_LEVELS)]
    level = opts[-1] if opts else None
    if level in (None, "-O0", "-Og"):
        out = [f for f in out if not f.startswith(OPT_LEVELS)] + [default_opt]
    return out


def codegen_flags(flags: list[str], default_opt: str) -> list[str]:
    """The original flags minus what only the preprocessor and front end read."""
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
            continue
        if f in TAKES_VALUE:
            if f in ("-Xclang",):
                skip = True
                continue
            skip = True
            continue
        if f.startswith(FRONTEND_ONLY_PREFIXES) and not f.startswith(("-Wl,", "-Wa,")):
            continue
        if f.startswith("-flto"):
            continue
        out.append(f)
    if not any(f.startswith(OPT_LEVELS) for f in out):
        out.append(default_opt)
    return out


BAKE_KEEP_F = ("-fPIC", "-fpic", "-fPIE", "-fpie", "-fno-pic", "-fno-pie", "-fno-PIC", "-fno-PIE",
               "-ffast-math", "-fno-fast-math", "-ffinite-math-only", "-fno-finite-math-only",
               "-funsafe-math-optimizations", "-fno-math-errno", "-fno-trapping-math",
               "-fassociative-math", "-freciprocal-math", "-fno-signed-zeros",
               "-ffunction-sections", "-fdata-sections", "-fno-omit-frame-pointer", "-fomit-frame-pointer",
               "-fvectorize", "-fno-vectorize", "-fslp-vectorize", "-fno-slp-vectorize",
               "-funroll-loops", "-fno-unroll-loops", "-fno-plt", "-fno-semantic-interposition",
               "-fopenmp", "-fstack-protector", "-fstack-protector-strong", "-fstack-protector-all",
               "-fno-stack-protector", "-fcf-protection", "-fno-strict-aliasing", "-fstrict-aliasing",
               "-fno-exceptions", "-fexceptions", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables")


def bake_flags(flags: list[str], default_opt: str) -> list[str]:
    """What the bake must repeat for this module: opt level and codegen flags.

    Anything else is left behind on purpose; the bake's allow-list would refuse it.
    """
    out = []
    opt = None
    for f in flags:
        if f.startswith(OPT_LEVELS):
            opt = "-O2" if f == "-O" else f
        elif f in BAKE_KEEP_F or f.startswith(("-ffp-contract=", "-fvisibility=", "-mcmodel=", "-mprefer-vector-width=")):
            out.append(f)
        elif f.startswith("-m") and not f.startswith(HOST_CPU_PREFIXES) and f[2:3].isalpha() and "=" not in f:
            out.append(f)  # ISA feature flags such as -mavx2 the build asked for on purpose
        elif f in ("-g", "-g0", "-g1", "-g2", "-g3", "-ggdb", "-gline-tables-only", "-pthread"):
            out.append(f)
    if opt in (None, "-O0", "-Og"):
        opt = default_opt
    return [opt, *out]


def parse(args: list[str]) -> dict:
    """Split a compiler command line into stage, output, sources and the rest."""
    stage = "link"
    output = None
    flags: list[str] = []      # everything but inputs and -o, for per-source compiles
    sources: list[tuple[str, str]] = []
    link_argv: list[str] = []  # the line with sources kept in place, for the link
    inputs: list[str] = []
    xlang = None
    stdin = False
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-c", "-S", "-E"):
            stage = {"-c": "c", "-S": "S", "-E": "E"}[a] if stage != "E" else stage
            i += 1
            continue
        if a in ("-M", "-MM"):
            stage = "M"
        if a == "-o" and i + 1 < len(args):
            output = args[i + 1]
            link_argv += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            output = a[2:]
            link_argv.append(a)
            i += 1
            continue
        if a == "-x" and i + 1 < len(args):
            xlang = args[i + 1] if args[i + 1] != "none" else None
            i += 2
            continue
        if a.startswith("-x") and len(a) > 2:
            xlang = a[2:] if a[2:] != "none" else None
            i += 1
            continue
        if a == "-":
            stdin = True
            i += 1
            continue
        if a in TAKES_VALUE and i + 1 < len(args):
            flags += [a, args[i + 1]]
            link_argv += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith("-") or a.startswith("@"):
            flags.append(a)
            link_argv.append(a)
            i += 1
            continue
        ext = os.path.splitext(a)[1]
        lang = X_LANG.get(xlang, "other") if xlang else SOURCE_LANG.get(ext)
        if lang is not None and lang not in ("header", "ir"):
            sources.append((a, lang))
        inputs.append(a)
        link_argv.append(a)
        i += 1
    def xlang_for(src: str) -> list[str]:
        return ["-x", xlang] if xlang else []

    return {"stage": stage, "output": output, "flags": flags, "sources": sources,
            "link_argv": link_argv, "inputs": inputs, "stdin": stdin, "argv": args, "xlang": xlang_for}


def main(argv: list[str]) -> int:
    shimdir, role, args = argv[1], argv[2], argv[3:]
    return Capture(shimdir, role).main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
