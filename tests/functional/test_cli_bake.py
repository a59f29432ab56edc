"""The CLI's answers that need a real capture."""

from bakery.cli import main


def test_unknown_target_is_clear(tmp_path, capsys, builds):
    rc = main(["bake", str(builds.bundle("pi")), "-t", "zen33", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown target 'zen33'" in err and "zen3" in err
