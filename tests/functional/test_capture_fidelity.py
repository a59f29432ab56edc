"""A captured build is the build the project's own system makes: its probes answer as with
Debian's C compiler, and CMake's Fortran support works, with the project's own tests run on
the bake."""

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod
from bakery.errors import BakeryError

# A hand-written configure script as real projects have them: the probe is a program piped to
# $CC, with no prototype (gcc 12 warns, clang 16 errors), and config.h records the answer.
CONFIGURE = """\
    #!/bin/sh
    : > config.h
    probe() {  # NAME PROGRAM [FLAGS]: HAVE_NAME when the program links
        if echo "$2" | $CC $3 -x c - -o /dev/null 2>/dev/null; then
            echo "#define HAVE_$1 1" >> config.h
        else
            echo "/* #undef HAVE_$1 */" >> config.h
        fi
    }
    probe FUTIMENS 'int main(){ futimens(); return 0; }'
    probe OLDSTYLE 'f(x) { return x; } int main(){ return f(0); }'
    probe PTRINT 'int main(){ int *p = 5; return p != 0; }'
    probe WERROR 'int main(){ futimens(); return 0; }' -Werror
    probe NOSUCHFN 'int no_such_function_anywhere(void); int main(){ return no_such_function_anywhere(); }'
    """
MAIN_C = """\
    #include <stdio.h>
    #include "config.h"
    int main(void) {
    #ifdef HAVE_FUTIMENS
        puts("futimens: yes");
    #else
        puts("futimens: no");
    #endif
        return 0;
    }
    """


def _probe_project(tmp_path: Path, extra: str = "") -> Path:
    recipe = write_project(tmp_path, "probes", {"configure": CONFIGURE, "main.c": MAIN_C,
                                                "Makefile": "main: main.c config.h\n\t$(CC) -O2 -o main main.c\n"},
                           """\
        build:
          system: script
          script: ["./configure", "make main CC=$CC"]
        outputs: [main]
        """.rstrip(" ") + extra)
    (tmp_path / "src" / "configure").chmod(0o755)
    return recipe


def _gcc_config_h(tmp_path: Path) -> str:
    src = tmp_path / "gcc"
    shutil.copytree(tmp_path / "src", src)
    subprocess.run(["sh", "./configure"], cwd=src, env={**os.environ, "CC": "gcc"}, check=True)
    return (src / "config.h").read_text()


def _captured_config_h(recipe_file: Path, tmp_path: Path, toolchain, name: str) -> str:
    work = tmp_path / f"work-{name}"
    capturemod.capture(recipemod.load(recipe_file), tmp_path / f"bundle-{name}", toolchain, workdir=work)
    return (work / "src" / "config.h").read_text()


@pytest.mark.skipif(not shutil.which("gcc"), reason="the reference is Debian's gcc (apt-get install gcc)")
def test_configure_probes_answer_as_with_debians_gcc(tmp_path, toolchain):
    recipe = _probe_project(tmp_path)
    reference = _gcc_config_h(tmp_path)
    assert "#define HAVE_FUTIMENS 1" in reference and "HAVE_WERROR 1" not in reference, reference
    assert _captured_config_h(recipe, tmp_path, toolchain, "capture") == reference
    # The bake is of the program that a gcc build of the same source is.
    plan = planmod.load(tmp_path / "bundle-capture")
    target = targetmod.resolve("x86_64_v3", compiler_version=toolchain.version, family=toolchain.family)
    bakemod.bake(tmp_path / "bundle-capture", plan, toolchain, target, tmp_path / "bin")
    out = subprocess.run([str(tmp_path / "bin" / "main")], capture_output=True, text=True, check=True).stdout
    assert out == "futimens: yes\n"


def test_strict_c_recipe_keeps_clangs_errors(tmp_path, toolchain):
    recipe = _probe_project(tmp_path, "        capture:\n          strict_c: true\n")
    config_h = _captured_config_h(recipe, tmp_path, toolchain, "strict")
    assert "/* #undef HAVE_FUTIMENS */" in config_h and "/* #undef HAVE_OLDSTYLE */" in config_h, config_h


# -- CMake with Fortran: a library, test programs, the project's own ctest tests --------------

CMAKELISTS = """\
    cmake_minimum_required(VERSION 3.20)
    project(vecf LANGUAGES Fortran)
    enable_testing()
    add_library(vecf SHARED src/vecf.f90)
    add_executable(test_dot tests/test_dot.f90)
    target_link_libraries(test_dot vecf)
    add_executable(test_norm tests/test_norm.f90)
    target_link_libraries(test_norm vecf)
    add_test(NAME dot COMMAND test_dot)
    add_test(NAME norm COMMAND test_norm)
    """
VECF = """\
    module vecf
      implicit none
    contains
      pure function dot(a, b) result(s)
        real(8), intent(in) :: a(:), b(:)
        real(8) :: s
        integer :: i
        s = 0
        do i = 1, size(a)
          s = s + a(i) * b(i)
        end do
      end function
      function norm2x(a) result(s)
        real(8), intent(in) :: a(:)
        real(8) :: s
        s = sqrt(dot(a, a))
      end function
    end module
    """
TEST_DOT = """\
    program test_dot
      use vecf
      implicit none
      real(8) :: a(1000), b(1000)
      integer :: i
      do i = 1, 1000
        a(i) = i
        b(i) = 2
      end do
      if (abs(dot(a, b) - 1001000d0) > 1d-9) error stop "dot is wrong"
      print '(a,f12.1)', 'dot', dot(a, b)
    end program
    """
TEST_NORM = """\
    program test_norm
      use vecf
      implicit none
      real(8) :: a(2) = [3d0, 4d0]
      if (abs(norm2x(a) - 5d0) > 1d-12) error stop "norm is wrong"
      print '(a,f6.2)', 'norm', norm2x(a)
    end program
    """


def test_cmake_fortran_project_captures_bakes_and_passes_its_own_tests(tmp_path, toolchain):
    """CMake's compiler check links a Fortran program through the wrapper; Debian's flang-new
    needs its runtime's folder for that, as the bake gives it."""
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed")
    try:
        toolchain.flang  # noqa: B018
    except BakeryError as e:
        pytest.skip(str(e))
    recipe_file = write_project(tmp_path, "vecf", {"CMakeLists.txt": CMAKELISTS}, """\
        build:
          system: cmake
          options: ["-DCMAKE_Fortran_FLAGS=-O2"]
        outputs: [test_dot, test_norm, libvecf.so]
        capture:
          languages: [fortran]
        """)
    for rel, text in (("src/vecf.f90", VECF), ("tests/test_dot.f90", TEST_DOT), ("tests/test_norm.f90", TEST_NORM)):
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_text(textwrap.dedent(text))
    work = tmp_path / "work"
    plan = capturemod.capture(recipemod.load(recipe_file), tmp_path / "bundle", toolchain, workdir=work)
    assert sorted(m["source"] for m in plan["modules"].values()) == \
        ["src/vecf.f90", "tests/test_dot.f90", "tests/test_norm.f90"]
    target = targetmod.resolve("x86_64_v3", compiler_version=toolchain.version, family=toolchain.family)
    bindir = tmp_path / "bin"
    bakemod.bake(tmp_path / "bundle", planmod.load(tmp_path / "bundle"), toolchain, target, bindir)
    # The project's own tests (ctest), run on the baked programs: the build tree's test programs
    # are replaced by the bakes, then ctest runs what CMake registered.
    build = next(p.parent for p in work.rglob("CTestTestfile.cmake"))
    for name in ("test_dot", "test_norm", "libvecf.so"):
        shutil.copy2(bindir / name, build / name)
    cp = subprocess.run(["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "100% tests passed" in cp.stdout
    out = subprocess.run([str(bindir / "test_dot")], capture_output=True, text=True, check=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(bindir)}).stdout
    assert "1001000.0" in out
