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


def test_bench_runs_its_binaries_with_stdin_compares_the_chosen_lines_and_trains_a_profile(tmp_path, capsys):
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
          train:
            command: [dot]
            stdin: "3000\\n"
        """)
    assert main(["-q", "bench", str(recipe), "-t", "x86_64_v3", "--workdir", str(tmp_path / "w"), "--json",
                 "--profile"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["binary"] for r in result["rows"]][2:] == ["baked for x86_64", "baked for x86_64_v3",
                                                         "baked for x86_64_v3, profile-guided"]
    # --profile: trained on bench.train's input (3000), benchmarked on bench's (20000)
    prof = result["profile"]
    assert prof["train"] == ["dot"] and prof["functions_without_profile"] == 0 and prof["vs_best_source_runtime"] > 0
    assert json.loads((tmp_path / "w" / "bundle.profile" / "profile.json").read_text())["runs"][0]["command"] == ["dot"]
    assert result["outputs_agree"], result
    assert all(result["checks"].values()), result["checks"]
    regs = {r["binary"]: r["registers"] for r in result["rows"]}
    assert regs["baked for x86_64_v3"]["ymm"] > 0 and regs["baked for x86_64"]["ymm"] == 0


def test_bench_inputs_are_made_once_and_given_as_files(tmp_path, capsys):
    """bench.inputs: generated files (larger than stdin's 1 MiB, or made by a script next to the
    recipe), given to the benchmark and to the training run as their standard input."""
    recipe = write_project(tmp_path, "dotf", {
        "dot.c": PROGRAM,
        "gen.py": "import sys\nprint(sys.argv[1])\nprint('#' * 2_000_000)\n",  # the count, then padding
        "Makefile": "dot: dot.c\n\t$(CC) -O2 -o dot dot.c\n",
    }, """\
        build:
          system: make
          options: [dot]
        outputs: [dot]
        bench:
          inputs:
            - {name: bench.txt, command: [python3, src/gen.py, "20000"]}
            - {name: train.txt, command: [python3, src/gen.py, "3000"]}
          command: [dot]
          stdin_file: bench.txt
          compare: "^dot "
          repeat: 1
          train:
            command: [dot]
            stdin_file: train.txt
        """)
    assert main(["-q", "bench", str(recipe), "-t", "x86_64_v2", "--workdir", str(tmp_path / "w"), "--json",
                 "--profile"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outputs_agree"] and len(result["rows"]) == 5, result
    made = tmp_path / "w" / "inputs"
    assert (made / "bench.txt").read_text().startswith("20000\n") and (made / "bench.txt").stat().st_size > 2_000_000
    assert (made / "train.txt").read_text().startswith("3000\n")
    assert result["profile"]["functions_without_profile"] == 0   # the training run ran on train.txt

    broken = recipe.read_text().replace('[python3, src/gen.py, "3000"]', "[python3, -c, 'raise SystemExit(4)']")
    recipe.write_text(broken)
    assert main(["-q", "bench", str(recipe), "-t", "x86_64_v2", "--workdir", str(tmp_path / "w2")]) != 0
    err = capsys.readouterr().err
    assert "bench.inputs train.txt: python3 -c raise SystemExit(4) exited 4" in err and "Traceback" not in err

    recipe.write_text(broken.replace("[python3, -c, 'raise SystemExit(4)']", "[no-such-generator-here]"))
    assert main(["-q", "bench", str(recipe), "-t", "x86_64_v2", "--workdir", str(tmp_path / "w3")]) != 0
    err = capsys.readouterr().err
    assert "bench.inputs train.txt: no-such-generator-here not found" in err and "Traceback" not in err


def test_a_bench_symbol_the_binary_lacks_is_an_error_not_zero_registers(tmp_path, toolchain):

    (tmp_path / "dot.c").write_text(PROGRAM)
    exe = tmp_path / "dot"
    subprocess.run([toolchain.clang, "-O2", "-ffast-math", "-march=x86-64-v3", "-o", str(exe), str(tmp_path / "dot.c")],
                   check=True)
    assert bench.vector_registers(exe, "dot")["ymm"] > 0
    with pytest.raises(BakeryError, match="'_Z3dotPKfS0_i' is not defined in"):
        bench.vector_registers(exe, "_Z3dotPKfS0_i")
