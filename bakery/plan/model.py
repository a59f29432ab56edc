"""The bake plan as types: what ``load()`` and ``parse()`` return once ``trust.validate`` accepted it.

``Plan.from_json`` checks nothing itself: it is given only documents that passed the schema and
the trust checks, so every key it reads is there and of its type. The plan's bytes, not
``to_json()``, are what is hashed and compared. Sequences are tuples and tables read-only, so a
plan cannot change after it was checked.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bakery import PLAN_MEDIA_TYPE

SCHEMA_VERSION = 1

Json = dict[str, Any]


# -- link items: what a link line is made of -------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    """A link argument as it is given: a driver or -Wl, flag, -l/-L, a system library path."""
    text: str


@dataclass(frozen=True)
class ModuleRef:
    """The object baked from a bitcode module of the plan."""
    sha256: str


@dataclass(frozen=True)
class ObjectRef:
    """A native object of the bundle, linked as captured."""
    sha256: str


Member = ModuleRef | ObjectRef


@dataclass(frozen=True)
class Archive:
    """A static archive, made at bake from its members."""
    name: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class LinkRef:
    """The output of an earlier link (a shared library of the build)."""
    id: str


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle (a version script, a dynamic list) given to a linker option: the
    linker tokens ``wl`` with ``prefix`` + the file's path at position ``at``."""
    sha256: str
    wl: tuple[str, ...]
    at: int
    prefix: str

    def tokens(self, path: str) -> list[str]:
        toks = list(self.wl)
        toks[self.at] = self.prefix + path
        return toks


LinkItem = Flag | ModuleRef | ObjectRef | Archive | LinkRef | FileRef


def link_item(a: str | Mapping[str, Any]) -> LinkItem:
    """A link argument of the plan's JSON as its type: the one place that tells them apart by key
    (for a document the schema accepted, each item has exactly one of them)."""
    if isinstance(a, str):
        return Flag(a)
    if "module" in a:
        return ModuleRef(a["module"])
    if "object" in a:
        return ObjectRef(a["object"])
    if "archive" in a:
        return Archive(a["archive"], tuple(_member(m) for m in a["members"]))
    if "link" in a:
        return LinkRef(a["link"])
    if "file" in a:
        return FileRef(a["file"], tuple(a["wl"]), a["at"], a["prefix"])
    raise ValueError(f"not a link item: {sorted(a)}")


def _member(a: Mapping[str, Any]) -> Member:
    item = link_item(a)
    if not isinstance(item, ModuleRef | ObjectRef):
        raise ValueError(f"not an archive member: {sorted(a)}")
    return item


def link_item_json(item: LinkItem) -> str | Json:
    match item:
        case Flag(text):
            return text
        case ModuleRef(sha):
            return {"module": sha}
        case ObjectRef(sha):
            return {"object": sha}
        case Archive(name, members):
            return {"archive": name, "members": [link_item_json(m) for m in members]}
        case LinkRef(id_):
            return {"link": id_}
        case FileRef(sha, wl, at, prefix):
            return {"file": sha, "wl": list(wl), "at": at, "prefix": prefix}
    raise TypeError(f"not a link item: {item!r}")


# -- the tables -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A capture of a module at a higher ISA level (its source tests feature macros)."""
    level: str
    path: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Module:
    path: str
    sha256: str
    source: str | None = None
    lang: str
    flags: tuple[str, ...]
    variants: tuple[Variant, ...] = ()
    macros: tuple[str, ...] = ()
    # "simplified": the capture ran the first half of the module's -O2/-O3 (bakery.passes) and
    # the bake runs the rest; "pre-optimization": the bake runs the whole pipeline.
    stage: str = "pre-optimization"
    # The capture took the functions' baseline target-cpu/tune-cpu/target-features out
    # (bakery.capture.attrs): the bake may compile the bitcode as it is (bakery.bake.bitcode).
    untargeted: bool = False

    @property
    def label(self) -> str:
        """What messages call it: its source file, else its digest."""
        return self.source if self.source is not None else self.sha256

    def variant(self, level: str) -> Variant:
        return next(v for v in self.variants if v.level == level)

    @classmethod
    def from_json(cls, m: Json) -> Module:
        variants = tuple(Variant(v["level"], v["path"], v["sha256"]) for v in m.get("variants", ()))
        return cls(path=m["path"], sha256=m["sha256"], source=m.get("source"), lang=m["lang"],
                   flags=tuple(m["flags"]), variants=variants, macros=tuple(m.get("macros", ())),
                   stage=m.get("stage", "pre-optimization"), untargeted=m.get("untargeted", False))

    def to_json(self) -> Json:
        doc: Json = {"path": self.path, "sha256": self.sha256}
        if self.source is not None:
            doc["source"] = self.source
        doc |= {"lang": self.lang, "flags": list(self.flags)}
        if self.stage != "pre-optimization":  # plans of pre-optimization IR keep their old shape
            doc["stage"] = self.stage
        if self.untargeted:
            doc["untargeted"] = True
        if self.variants or self.macros:  # as the capture writes them: both for a target-sensitive unit
            doc["variants"] = [{"level": v.level, "path": v.path, "sha256": v.sha256} for v in self.variants]
            doc["macros"] = list(self.macros)
        return doc


@dataclass(frozen=True)
class ObjectFile:
    """A native object of the bundle (assembly, or a compile bakery could not keep as bitcode)."""
    path: str
    sha256: str
    name: str = ""


@dataclass(frozen=True)
class BundleFile:
    """A file of the bundle a link gives the linker (a version script, a dynamic list)."""
    path: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Link:
    id: str
    output: str
    kind: str          # "executable" or "shared"
    driver: str        # "c", "c++" or "fortran"
    soname: str | None = None
    install: str
    also: tuple[str, ...] = ()   # more install names: declared outputs that are copies or links of it
    declared: bool = False
    args: tuple[LinkItem, ...]

    @classmethod
    def from_json(cls, link: Json) -> Link:
        return cls(id=link["id"], output=link["output"], kind=link["kind"], driver=link["driver"],
                   soname=link.get("soname"), install=link["install"], also=tuple(link.get("also", ())),
                   declared=link.get("declared", False), args=tuple(link_item(a) for a in link["args"]))

    def to_json(self) -> Json:
        doc: Json = {"id": self.id, "output": self.output, "kind": self.kind, "driver": self.driver,
                     "soname": self.soname, "install": self.install}
        if self.also:  # as the capture writes it: only for a link installed under more names
            doc["also"] = list(self.also)
        return doc | {"declared": self.declared, "args": [link_item_json(a) for a in self.args]}


@dataclass(frozen=True, kw_only=True)
class Toolchain:
    """The LLVM the bitcode was made by."""
    llvm_major: int
    captured_version: str | None = None   # "16.0.6"; plans of older captures say only the major
    triple: str
    family: str

    @property
    def version(self) -> str:
        """The full version the capture recorded, else ``<major>.0.0``."""
        return self.captured_version if self.captured_version is not None else f"{self.llvm_major}.0.0"

    @classmethod
    def from_json(cls, tc: Json) -> Toolchain:
        return cls(llvm_major=tc["llvm_major"], captured_version=tc.get("version"), triple=tc["triple"],
                   family=tc["family"])

    def to_json(self) -> Json:
        doc: Json = {"llvm_major": self.llvm_major}
        if self.captured_version is not None:
            doc["version"] = self.captured_version
        return doc | {"triple": self.triple, "family": self.family}


@dataclass(frozen=True)
class Preserve:
    """What the recipe keeps on every compile (flags) and link (libs)."""
    flags: tuple[str, ...] = ()
    libs: tuple[str, ...] = ()


@dataclass(frozen=True)
class App:
    name: str
    version: str

    def to_json(self) -> Json:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True, kw_only=True)
class RecipeInfo:
    """What the plan says of its recipe."""
    digest: str
    entrypoint: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()   # Debian packages the outputs load at run time


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the capture took as the build gave it, or fell back on, for the outputs it names
    (``capture.decisions``): a ``native-object`` linked as it was (``what`` its source or name,
    ``object`` its digest), a ``system-library`` the bake links from its system, a module's
    ``fallback`` (the bake still works, slower)."""
    kind: str
    what: str
    why: str
    links: tuple[str, ...] = ()     # the link outputs it goes into
    object: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> Decision:
        return cls(kind=d["kind"], what=d["what"], why=d["why"], links=tuple(d["links"]), object=d.get("object"))

    def to_json(self) -> Json:
        return {"kind": self.kind, "what": self.what, "why": self.why, "links": list(self.links)} \
            | ({"object": self.object} if self.object else {})


@dataclass(frozen=True, kw_only=True)
class Dropped:
    """A flag the capture left out of the plan (``capture.dropped``), of a link or a module."""
    flag: str
    why: str
    link: str | None = None
    module: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> Dropped:
        return cls(flag=d["flag"], why=d["why"], link=d.get("link"), module=d.get("module"))

    def to_json(self) -> Json:
        doc: Json = {"flag": self.flag, "why": self.why}
        return doc | {k: v for k, v in (("link", self.link), ("module", self.module)) if v is not None}


@dataclass(frozen=True, kw_only=True)
class Plan:
    app: App
    recipe: RecipeInfo
    toolchain: Toolchain
    preserve: Preserve
    modules: Mapping[str, Module]        # by sha256, in the plan's order
    objects: Mapping[str, ObjectFile]    # by sha256
    files: Mapping[str, BundleFile]      # by sha256
    links: tuple[Link, ...]              # each after the links it uses
    capture: Mapping[str, Any] | None = None   # what the capture noted (free-form, read by no bake)

    # The capture's notes the schema types (plans of older captures lack some: empty).
    @property
    def decisions(self) -> tuple[Decision, ...]:
        return tuple(Decision.from_json(d) for d in (self.capture or {}).get("decisions", ()))

    @property
    def dropped(self) -> tuple[Dropped, ...]:
        return tuple(Dropped.from_json(d) for d in (self.capture or {}).get("dropped", ()))

    @property
    def probes(self) -> Mapping[str, int]:
        """How many probes (configure checks, CMake try_compile, ...) the build ran, by kind."""
        return MappingProxyType(dict((self.capture or {}).get("probes", {})))

    def installs(self) -> list[tuple[str, Link]]:
        """Every file a bake writes, as (install name, the link that makes it), in the plan's
        order: each link's ``install``, then its ``also`` names (copies of the same output)."""
        return [(name, link) for link in self.links for name in (link.install, *link.also)]

    @classmethod
    def from_json(cls, doc: Json) -> Plan:
        """The plan of a document ``trust.validate`` accepted (only such: nothing is checked here)."""
        r = doc["recipe"]
        return cls(
            app=App(doc["app"]["name"], doc["app"]["version"]),
            recipe=RecipeInfo(digest=r["digest"], entrypoint=tuple(r.get("entrypoint", ())),
                              test=tuple(r.get("test", ())), packages=tuple(r.get("packages", ()))),
            toolchain=Toolchain.from_json(doc["toolchain"]),
            preserve=Preserve(tuple(doc["preserve"]["flags"]), tuple(doc["preserve"]["libs"])),
            modules=MappingProxyType({sha: Module.from_json(m) for sha, m in doc["modules"].items()}),
            objects=MappingProxyType({sha: ObjectFile(o["path"], o["sha256"], o.get("name", ""))
                                      for sha, o in doc["objects"].items()}),
            files=MappingProxyType({sha: BundleFile(f["path"], f["sha256"]) for sha, f in doc["files"].items()}),
            links=tuple(Link.from_json(link) for link in doc["links"]),
            capture=MappingProxyType(copy.deepcopy(doc["capture"])) if "capture" in doc else None,
        )

    def to_json(self) -> Json:
        """The plan as JSON, as the capture writes it (optional lists it lacks come back empty).
        Never for a digest: the plan's own bytes are what is signed, hashed and compared."""
        doc: Json = {
            "schemaVersion": SCHEMA_VERSION, "mediaType": PLAN_MEDIA_TYPE,
            "app": self.app.to_json(),
            "recipe": {"digest": self.recipe.digest, "entrypoint": list(self.recipe.entrypoint),
                       "test": list(self.recipe.test), "packages": list(self.recipe.packages)},
            "toolchain": self.toolchain.to_json(),
            "preserve": {"flags": list(self.preserve.flags), "libs": list(self.preserve.libs)},
            "modules": {sha: m.to_json() for sha, m in self.modules.items()},
            "objects": {sha: {"path": o.path, "sha256": o.sha256, "name": o.name} for sha, o in self.objects.items()},
            "files": {sha: {"path": f.path, "sha256": f.sha256} for sha, f in self.files.items()},
            "links": [link.to_json() for link in self.links],
        }
        if self.capture is not None:
            doc["capture"] = copy.deepcopy(dict(self.capture))
        return doc
