"""A link's ``also``: more install names for the same output (declared copies and links of it),
checked as install names are, and read by every use through ``Plan.installs()``."""

import copy
import json

import pytest

from bakery import PLAN_MEDIA_TYPE
from bakery import plan as planmod
from bakery.errors import PlanRefused

SHA = "0" * 64


def _link(id_: str, output: str, **kw) -> dict:
    return {"id": id_, "output": output, "kind": "executable", "driver": "c", "soname": None,
            "install": output, **kw, "declared": True, "args": [{"module": SHA}, "-lm"]}


PLAN = {
    "schemaVersion": 1, "mediaType": PLAN_MEDIA_TYPE,
    "app": {"name": "copies", "version": "1.0"},
    "recipe": {"digest": "sha256:" + SHA, "entrypoint": ["prog"], "test": [], "packages": []},
    "toolchain": {"llvm_major": 16, "version": "16.0.6", "triple": "x86_64-pc-linux-gnu", "family": "x86_64"},
    "preserve": {"flags": [], "libs": []},
    "modules": {SHA: {"path": f"bitcode/{SHA}.bc", "sha256": SHA, "source": "prog.c", "lang": "c", "flags": ["-O2"]}},
    "objects": {}, "files": {},
    "links": [_link("L0", "prog", also=["prog2", "prog3"]), _link("L1", "other")],
}


def _parse(fn=None) -> planmod.Plan:
    doc = copy.deepcopy(PLAN)
    if fn is not None:
        fn(doc)
    return planmod.parse(json.dumps(doc).encode())


def test_every_install_name_comes_with_its_link():
    plan = _parse()
    assert [(name, link.id) for name, link in plan.installs()] == [
        ("prog", "L0"), ("prog2", "L0"), ("prog3", "L0"), ("other", "L1")]
    assert plan.to_json() == PLAN


def test_a_plan_without_the_field_still_loads():
    plan = _parse(lambda p: p["links"][0].pop("also"))
    assert plan.links[0].also == ()
    assert [name for name, _ in plan.installs()] == ["prog", "other"]
    assert "also" not in plan.to_json()["links"][0], "a plan of an older capture keeps its shape"


@pytest.mark.parametrize("also, why", [
    (["prog2", "prog2"], "'prog2' is used twice"),
    (["prog"], "'prog' is used twice"),              # the link's own install name
    (["other"], "'other' is used twice"),            # another link's install name
    (["../prog2"], "'../prog2' is not a plain file name"),
    (["sub/prog2"], "'sub/prog2' is not a plain file name"),
    ([".prog2"], "'.prog2' is not a plain file name"),
    ([""], "'' is not a plain file name"),
])
def test_a_duplicate_or_unsafe_alias_is_refused(also, why):
    with pytest.raises(PlanRefused, match=f"install name {why}"):
        _parse(lambda p: p["links"][0].update(also=also))


def test_an_alias_that_is_not_a_list_of_names_is_refused():
    for bad in ("prog2", [1], ["x" * 256], ["p"] * 10001):
        with pytest.raises(PlanRefused, match="plan refused: links/0/also"):
            _parse(lambda p, bad=bad: p["links"][0].update(also=bad))
