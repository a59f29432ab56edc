"""Capture details that need a real compiler but no image."""

import json
import textwrap

from bakery import capture as capturemod
from bakery import recipe as recipemod


def test_hand_written_configure_probes_are_run_but_not_captured(tmp_path, toolchain):
    """zlib's configure compiles ztest$$.c: neither named conftest nor linked to /dev/null."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "configure").write_text(textwrap.dedent("""\
        #!/bin/sh
        set -e
        test=ztest$$
        echo 'int main(void) { return 0; }' > $test.c
        $CC -c $test.c
        $CC -o $test $test.c
        ./$test
        rm -f $test $test.c $test.o
        echo 'CC_OK=yes' > config.mk
        """))
    (src / "configure").chmod(0o755)
    (src / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    (src / "Makefile").write_text("include config.mk\nhello: hello.c\n\t$(CC) -O2 -o hello hello.c\n")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(textwrap.dedent("""\
        name: probes
        version: "1.0"
        sources:
          - path: ./src
        build:
          system: script
          script: ["./configure", "make hello CC=$CC"]
        outputs: [hello]
        """))
    plan = capturemod.capture(recipemod.load(recipe_file), tmp_path / "bundle", toolchain, quiet=True)
    assert plan["capture"]["translation_units"] == 1, "the probe's compiles were recorded"
    sources = sorted(m["source"] for m in plan["modules"].values())
    assert sources == ["hello.c"], sources
    assert [link["output"] for link in plan["links"]] == ["hello"], json.dumps(plan["links"])[:500]


def test_driver_level_z_keyword_is_kept_as_a_linker_option(tmp_path, toolchain):
    """zstd links with `-z noexecstack` (the driver's form): dropping it would lose a hardening flag."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    (src / "Makefile").write_text(
        "hello: hello.c\n\t$(CC) -O2 -c hello.c\n\t$(CC) -O2 -Qunused-arguments -z noexecstack -o hello hello.o\n")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(textwrap.dedent("""\
        name: zflag
        version: "1.0"
        sources:
          - path: ./src
        build:
          system: make
          options: [hello]
        outputs: [hello]
        """))
    plan = capturemod.capture(recipemod.load(recipe_file), tmp_path / "bundle", toolchain, quiet=True)
    args = [a for a in plan["links"][0]["args"] if isinstance(a, str)]
    assert "-Wl,-z,noexecstack" in args, args
    assert not plan["capture"]["dropped"], plan["capture"]["dropped"]
