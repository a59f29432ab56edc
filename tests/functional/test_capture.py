"""Capture details that need a real compiler but no image."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod


def _project(tmp_path, name: str, files: dict[str, str], build: str, version: str = "1.0"):
    return recipemod.load(write_project(tmp_path, name, files, build, version))


def _bake(tmp_path, toolchain, target_name: str) -> Path:
    """Bake tmp_path/bundle for the target into tmp_path/bin."""
    target = targetmod.resolve(target_name, compiler_version=toolchain.version, family=toolchain.family)
    bakemod.bake(tmp_path / "bundle", planmod.load(tmp_path / "bundle"), toolchain, target, tmp_path / "bin")
    return tmp_path / "bin"


def test_hand_written_configure_probes_are_run_but_not_captured(tmp_path, toolchain):
    """zlib's configure compiles ztest$$.c: neither named conftest nor linked to /dev/null."""
    recipe = _project(tmp_path, "probes", {
        "configure": """\
            #!/bin/sh
            set -e
            test=ztest$$
            echo 'int main(void) { return 0; }' > $test.c
            $CC -c $test.c
            $CC -o $test $test.c
            ./$test
            rm -f $test $test.c $test.o
            echo 'CC_OK=yes' > config.mk
            """,
        "hello.c": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
        "Makefile": "include config.mk\nhello: hello.c\n\t$(CC) -O2 -o hello hello.c\n",
    }, """\
        build:
          system: script
          script: ["./configure", "make hello CC=$CC"]
        outputs: [hello]
        """)
    (tmp_path / "src" / "configure").chmod(0o755)
    plan = capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert plan["capture"]["translation_units"] == 1, "the probe's compiles were recorded"
    sources = sorted(m["source"] for m in plan["modules"].values())
    assert sources == ["hello.c"], sources
    assert [link["output"] for link in plan["links"]] == ["hello"], json.dumps(plan["links"])[:500]


def test_driver_level_z_keyword_is_kept_as_a_linker_option(tmp_path, toolchain):
    """zstd links with `-z noexecstack` (the driver's form): dropping it would lose a hardening flag."""
    recipe = _project(tmp_path, "zflag", {
        "hello.c": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
        "Makefile": "hello: hello.c\n\t$(CC) -O2 -c hello.c\n\t$(CC) -O2 -Qunused-arguments -z noexecstack -o hello hello.o\n",
    }, """\
        build:
          system: make
          options: [hello]
        outputs: [hello]
        """)
    plan = capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    args = [a for a in plan["links"][0]["args"] if isinstance(a, str)]
    assert "-Wl,-z,noexecstack" in args, args
    assert not plan["capture"]["dropped"], plan["capture"]["dropped"]


MESON_BUILD = """\
project('greet', 'c', version: '1.2.3')
cc = meson.get_compiler('c')
conf = configuration_data()
conf.set10('HAVE_STRNDUP', cc.has_function('strndup', prefix: '#include <string.h>'))
conf.set10('HAVE_BUILTIN_POPCOUNT', cc.compiles('int f(unsigned x) { return __builtin_popcount(x); }'))
configure_file(output: 'config.h', configuration: conf)
m = cc.find_library('m')
lib = shared_library('greet', 'greet.c', version: '1.2.3', soversion: '1', dependencies: m)
executable('greet', 'main.c', link_with: lib)
"""


def _meson_project(tmp_path):
    return _project(tmp_path, "greet", {
        "meson.build": MESON_BUILD,
        "greet.c": """\
            #include "config.h"
            #include <math.h>
            double greet_norm(const double *v, int n) {
                double s = 0;
                for (int i = 0; i < n; i++) s += v[i] * v[i];
                return sqrt(s) + HAVE_STRNDUP + HAVE_BUILTIN_POPCOUNT;
            }
            """,
        "main.c": """\
            #include <stdio.h>
            double greet_norm(const double *v, int n);
            int main(void) {
                double v[1000];
                for (int i = 0; i < 1000; i++) v[i] = i * 0.5;
                printf("norm %.6f\\n", greet_norm(v, 1000));
                return 0;
            }
            """,
    }, """\
        build:
          system: meson
          options: ["-Db_ndebug=true"]
        outputs: [greet]
        """, version="1.2.3")


def _capture_greet_and_bake(recipe, tmp_path, toolchain, target_name):
    plan = capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert sorted(m["source"] for m in plan["modules"].values()) == ["greet.c", "main.c"], plan["modules"]
    assert plan["capture"]["translation_units"] == 2, "meson's probes were recorded"
    installs = sorted(link["install"] for link in plan["links"])
    assert installs == ["greet", "libgreet.so.1"], installs
    assert not [d for d in plan["capture"]["dropped"] if "compile-only" not in d["why"]], plan["capture"]["dropped"]
    return _bake(tmp_path, toolchain, target_name) / "greet"


# 2 = both probes answered yes (strndup exists, __builtin_popcount compiles)
GREET_OUTPUT = "norm 9123.862474\n"


def test_meson_project_is_captured_and_baked(tmp_path, toolchain):
    """meson setup's probes (sanity check, has_function, compiles) are run, not captured; the shared
    library with its soname travels with the program; the baked program prints what a plain build does."""
    recipe = _meson_project(tmp_path)
    greet = _capture_greet_and_bake(recipe, tmp_path, toolchain, "x86_64_v3")
    capturemod.from_source(recipe, toolchain, tmp_path / "ref")
    baked = subprocess.run([greet], capture_output=True, text=True, check=True).stdout
    plain = subprocess.run([tmp_path / "ref" / "greet"], capture_output=True, text=True,
                           env={"LD_LIBRARY_PATH": str(tmp_path / "ref")}, check=True).stdout
    assert baked == plain == GREET_OUTPUT, (baked, plain)


def test_meson_project_cross_captured_for_arm64_runs_under_qemu(tmp_path, toolchain):
    """Meson sees the cross wrapper as a native compiler; its sanity check runs through qemu-user."""
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-user binfmt for aarch64 is not registered (scripts/setup.sh does it)")
    from bakery import toolchain as toolchainmod

    arm = toolchain.for_triple(toolchainmod.triple_of_platform("linux/arm64"))
    greet = _capture_greet_and_bake(_meson_project(tmp_path), tmp_path, arm, "neoverse_n1")
    out = subprocess.run([greet], capture_output=True, text=True, check=True,
                         env={**os.environ, "QEMU_LD_PREFIX": "/usr/aarch64-linux-gnu"}).stdout
    assert out == GREET_OUTPUT


def test_openmp_program_is_captured_and_baked(tmp_path, toolchain):
    """-fopenmp survives to the bake (the outlined parallel regions are in the bitcode) and the
    baked program links LLVM's libomp and runs its threads."""
    recipe = _project(tmp_path, "omp", {
        "omp.c": """\
            #include <stdio.h>
            #include <omp.h>
            int main(void) {
                long long s = 0;
                int seen = 0;
                #pragma omp parallel reduction(+:seen)
                seen += 1;
                #pragma omp parallel for reduction(+:s) schedule(static)
                for (long long i = 1; i <= 20000000; i++) s += (i * i) % 1000003;
                printf("threads %d sum %lld\\n", seen, s);
                return 0;
            }
            """,
        "Makefile": "omp: omp.c\n\t$(CC) -O2 -fopenmp -o omp omp.c\n",
    }, """\
        build:
          system: make
          options: [omp]
        outputs: [omp]
        """)
    plan = capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert "-fopenmp" in plan["links"][0]["args"]
    _bake(tmp_path, toolchain, "x86_64_v3")
    capturemod.from_source(recipe, toolchain, tmp_path / "ref")
    env = {**os.environ, "OMP_NUM_THREADS": "3"}
    baked = subprocess.run([tmp_path / "bin" / "omp"], capture_output=True, text=True, env=env, check=True).stdout
    plain = subprocess.run([tmp_path / "ref" / "omp"], capture_output=True, text=True, env=env, check=True).stdout
    assert baked == plain and baked.startswith("threads 3 sum "), (baked, plain)
    needed = subprocess.run(["readelf", "-d", tmp_path / "bin" / "omp"], capture_output=True, text=True).stdout
    assert "libomp.so" in needed, needed


def test_mpi_program_built_with_mpicc_is_captured_and_runs_on_two_ranks(tmp_path, toolchain):
    """mpicc runs the compiler OMPI_CC/MPICH_CC names: bakery's wrapper, so the unit is captured and
    the link keeps -lmpi; the baked program runs under mpirun like a plain build."""
    import shutil

    if not shutil.which("mpicc") or not shutil.which("mpirun"):
        pytest.skip("Open MPI is not installed (scripts/setup.sh installs libopenmpi-dev openmpi-bin)")
    recipe = _project(tmp_path, "ring", {
        "ring.c": """\
            #include <mpi.h>
            #include <stdio.h>
            int main(int argc, char **argv) {
                MPI_Init(&argc, &argv);
                int rank, size;
                MPI_Comm_rank(MPI_COMM_WORLD, &rank);
                MPI_Comm_size(MPI_COMM_WORLD, &size);
                long long local = 0, total = 0;
                for (long long i = rank; i < 3000000; i += size) local += (i * i) % 1009;
                MPI_Reduce(&local, &total, 1, MPI_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
                if (rank == 0) printf("ranks %d total %lld\\n", size, total);
                MPI_Finalize();
                return 0;
            }
            """,
        "Makefile": "ring: ring.c\n\tmpicc -O2 -o ring ring.c\n",
    }, """\
        build:
          system: make
          options: [ring]
        outputs: [ring]
        """)
    plan = capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert [m["source"] for m in plan["modules"].values()] == ["ring.c"]
    assert "-lmpi" in plan["links"][0]["args"], plan["links"][0]["args"]
    _bake(tmp_path, toolchain, "x86_64_v3")
    capturemod.from_source(recipe, toolchain, tmp_path / "ref")
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]
    env = {**os.environ, "OMPI_MCA_btl": "self,vader"}  # shared memory only: no network probing
    outs = [subprocess.run([*mpirun, d / "ring"], capture_output=True, text=True, env=env, timeout=120).stdout
            for d in (tmp_path / "bin", tmp_path / "ref")]
    assert outs[0] == outs[1] and outs[0].startswith("ranks 2 total "), outs


def test_what_the_capture_takes_as_the_build_made_it_is_recorded(tmp_path, toolchain):
    """The audit of silent fallbacks (docs/capture.md): an assembly unit, a unit compiled to assembly
    with -S and then assembled, a unit compiled by the real compiler called by its full path, a
    system library and a configure script's probes each leave a decision in the plan, named by the
    output they go into; the bake links them as the build did."""
    if toolchain.family != "x86_64":
        pytest.skip("the assembly unit is x86-64")
    recipe = _project(tmp_path, "audit", {
        "configure": """\
            #!/bin/sh
            set -e
            echo 'int main(void) { return 0; }' > probe.c
            $CC -c probe.c -o probe.o
            $CC -o probe probe.o
            rm -f probe probe.c probe.o
            echo 'OK=yes' > config.mk
            """,
        "main.c": """\
            #include <math.h>
            #include <stdio.h>
            int add_asm(int, int);
            int ext_value(void);
            int gen_value(void);
            int main(int argc, char **argv) {
                (void)argv;
                double r = sqrt((double)(argc + 80));
                printf("%d %d %d %.3f\\n", add_asm(40, 2), ext_value(), gen_value(), r);
                return 0;
            }
            """,
        "add.S": """\
            .text
            .globl add_asm
            .type add_asm,@function
            add_asm:
                leal (%rdi,%rsi), %eax
                ret
            .section .note.GNU-stack,"",@progbits
            """,
        "ext.c": "int ext_value(void) { return 7; }\n",
        "gen.c": "int gen_value(void) { return 9; }\n",
        "Makefile": """\
            include config.mk
            prog: main.o add.o ext.o gen.o
            \t$(CC) -O2 -o prog main.o add.o ext.o gen.o -lm
            main.o: main.c
            \t$(CC) -O2 -c main.c -o main.o
            add.o: add.S
            \t$(CC) -c add.S -o add.o
            ext.o: ext.c
            \t$(REALCC) -O2 -c ext.c -o ext.o
            gen.s: gen.c
            \t$(CC) -O2 -S gen.c -o gen.s
            gen.o: gen.s
            \t$(CC) -c gen.s -o gen.o
            """.replace("\\t", "\t"),
    }, f"""\
        build:
          system: script
          script: ["./configure", "make prog CC=$CC REALCC={toolchain.clang}"]
        outputs: [prog]
        """)
    (tmp_path / "src" / "configure").chmod(0o755)
    plan = capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert plan["capture"]["probes"] == {"configure": 2}, plan["capture"]["probes"]
    assert [m["source"] for m in plan["modules"].values()] == ["main.c"], plan["modules"]
    got = {(d["kind"], d["what"]): d for d in plan["capture"]["decisions"]}
    assert set(got) == {("native-object", "add.S"), ("native-object", "gen.s"), ("native-object", "ext.o"),
                        ("system-library", "-lm")}, plan["capture"]["decisions"]
    assert all(d["links"] == ["prog"] for d in got.values()), plan["capture"]["decisions"]
    assert got["native-object", "add.S"]["why"] == "assembly"
    assert got["native-object", "gen.s"]["why"].startswith("assembly made with -S from gen.c")
    assert got["native-object", "ext.o"]["why"].startswith("not compiled through bakery's wrappers")
    assert {d["object"] for d in got.values() if "object" in d} == set(plan["objects"])
    # what inspect and the capture summary read: the typed plan of the bundle
    typed = planmod.load(tmp_path / "bundle")
    assert {(d.kind, d.what) for d in typed.decisions} == set(got) and dict(typed.probes) == {"configure": 2}
    out = subprocess.run([_bake(tmp_path, toolchain, "x86_64_v3") / "prog"], capture_output=True, text=True,
                         check=True).stdout
    assert out == "42 7 9 9.000\n", out
