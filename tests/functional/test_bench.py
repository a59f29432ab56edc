"""bakery bench end to end on a small program: two from-source builds, a capture, two bakes, four runs."""

import json
import subprocess

import pytest
from helpers import write_project

from bakery import bench
from bakery.cli import main
from bakery.errors import BakeryError

pytestmark = pytest.mark.slow

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N 4096
float a[N], b[N];

float dot(const float *x, const float *y, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

int main(void) {
    int reps = 0;
    if (scanf("%d", &reps) != 1 || reps <= 0) { fprintf(stderr, "no repetition count on stdin\n"); return 1; }
    for (int i = 0; i < N; i++) { a[i] = (float)(i % 7); b[i] = (float)(i % 5); }
    float s = 0;
    for (int r = 0; r < reps; r++) s += dot(a, b, N) / (float)reps;
    printf("started at %ld\n", (long)clock());   /* differs between runs: left out by compare */
    printf("dot %.1f\n", s);
    return 0;
}
"""


def test_bench_runs_four_binaries_with_stdin_and_compares_the_chosen_lines(tmp_path, capsys):
    recipe = write_project(tmp_path, "dot", {
        "dot.c": PROGRAM,
        "Makefile": "dot: dot.c\n\t$(CC) -O2 -ffast-math -o dot dot.c\n",
    }, """\
        build:
          system: make
          options: [dot]
        outputs: [dot]
        preserve:
          flags: ["-ffast-math"]
        bench:
          command: [dot]
          stdin: "20000\\n"
          compare: "^dot "
          repeat: 1
          symbol: dot
        """)
    assert main(["-q", "bench", str(recipe), "-t", "x86_64_v3", "--workdir", str(tmp_path / "w"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["binary"] for r in result["rows"]][2:] == ["baked for x86_64", "baked for x86_64_v3"]
    assert result["outputs_agree"], result
    assert all(result["checks"].values()), result["checks"]
    regs = {r["binary"]: r["registers"] for r in result["rows"]}
    assert regs["baked for x86_64_v3"]["ymm"] > 0 and regs["baked for x86_64"]["ymm"] == 0


def test_a_bench_symbol_the_binary_lacks_is_an_error_not_zero_registers(tmp_path, toolchain):

    (tmp_path / "dot.c").write_text(PROGRAM)
    exe = tmp_path / "dot"
    subprocess.run([toolchain.clang, "-O2", "-ffast-math", "-march=x86-64-v3", "-o", str(exe), str(tmp_path / "dot.c")],
                   check=True)
    assert bench.vector_registers(exe, "dot")["ymm"] > 0
    with pytest.raises(BakeryError, match="'_Z3dotPKfS0_i' is not defined in"):
        bench.vector_registers(exe, "_Z3dotPKfS0_i")
