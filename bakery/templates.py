"""Containerfile and config templates: files, rendered with StrictUndefined."""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

REPO_ROOT = Path(__file__).resolve().parent.parent


def _search_path() -> list[str]:
    # The repository's Containerfiles/ and registry/ (editable installs and
    # the container build context), else the copies shipped in the package.
    here = Path(__file__).resolve().parent
    return [str(REPO_ROOT), str(here / "data")]


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_search_path()),
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
    return env.loader.get_source(env, template)[0]
