"""Containerfile and config templates: files, rendered with StrictUndefined."""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

DATA = Path(__file__).resolve().parent / "data"   # Containerfiles/, k8s/, registry/: package data


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(DATA)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_file(template: str, /, **context) -> str:
    return environment().get_template(template).render(**context)


def source(template: str) -> str:
    env = environment()
    assert env.loader is not None
    return env.loader.get_source(env, template)[0]
