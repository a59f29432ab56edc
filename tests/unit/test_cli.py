"""The command line as users meet it: exit codes, short errors, no tracebacks."""


import pytest
from helpers import REPO

from bakery import recipe as recipemod
from bakery.cli import main

RECIPES = sorted(REPO.glob("examples/*/recipe.yaml")) + sorted(REPO.glob("recipes/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(path):
    recipemod.load(path)


def test_validate_ok(capsys):
    assert main(["validate", str(RECIPES[0])]) == 0
    assert ": ok" in capsys.readouterr().out


def test_bad_recipe_is_one_line_no_traceback(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nversion: '1'\nsources: [{path: .}]\nbuild: {system: mak}\noutputs: [x]\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml:4:" in err and "build.system" in err
    assert "Traceback" not in err


def test_refused_preserved_flag_fails_validate_in_one_line(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nversion: '1'\nsources: [{path: .}]\nbuild: {system: make}\noutputs: [x]\n"
                   'preserve:\n  flags: ["-O2", "-D_FILE_OFFSET_BITS=64"]\n')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    error, hint = err.splitlines()
    assert error == (f"bakery: error: {bad}:7: preserve.flags: '-D_FILE_OFFSET_BITS=64': "
                     "not in the allow-list of codegen flags")
    assert hint.startswith("bakery: hint: ") and "preprocessor" in hint
    assert "Traceback" not in err


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["--debug", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_missing_bundle_is_clear(tmp_path, capsys):
    assert main(["bake", str(tmp_path), "-o", str(tmp_path / "o")]) == 1
    assert "plan.json not found" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("validate", "capture", "bake", "bench", "targets"):
        assert cmd in out


def test_targets_json(capsys):
    import json
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["native"] and any(t["name"] == "x86_64_v4" for t in data["targets"])
