"""Which node tags ``bakery serve`` may bake lazily: node-tag names (``<tag>-<target>[-slim]``)
and the policy (rules of repository globs and archspec targets), loaded from YAML or a dict.

Stdlib, archspec and :mod:`bakery.oci` only: tested on its own, without building images.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import archspec.cpu

from bakery import oci
from bakery.errors import BakeryError

SLIM = "-slim"


# -- node tags ---------------------------------------------------------------------

@dataclass(frozen=True)
class NodeTag:
    base: str        # the IR image's tag
    target: str      # archspec name as asked
    slim: bool

    @property
    def tag(self) -> str:
        return f"{self.base}-{self.target}" + (SLIM if self.slim else "")


def split_tag(tag: str) -> tuple[str, str, bool] | None:
    """``1.0-x86_64_v3`` -> ("1.0", "x86_64_v3", False); ``1.0-zen4-slim`` -> (.., True).

    Archspec names contain ``_``, never ``-``, so the target is what follows the
    last ``-`` (after setting a ``-slim`` suffix aside). The target is not checked.
    """
    slim = tag.endswith(SLIM)
    rest = tag[: -len(SLIM)] if slim else tag
    base, sep, target = rest.rpartition("-")
    if not sep or not base or not target or not oci.valid_tag(base):
        return None
    return base, target, slim


def parse_node_tag(tag: str) -> NodeTag | None:
    """A node tag whose target is a known archspec name, else None."""
    parts = split_tag(tag)
    if parts is None or parts[1] not in archspec.cpu.TARGETS:
        return None
    return NodeTag(*parts)


# -- policy ------------------------------------------------------------------------

DEFAULT_POLICY_TEXT = """\
# Default policy: ANY client may bake ANY repository for every archspec target of the plan's ISA
# family. Deploy with a policy file instead (bakery/data/registry/lazy-policy.yaml).
rules:
  - repositories: ["*"]
    targets: ["*"]
"""


@dataclass(frozen=True)
class Rule:
    repositories: tuple[str, ...]
    targets: tuple[str, ...]
    slim: bool = True

    def target_allowed(self, name: str) -> bool:
        for t in self.targets:
            if t == "*" or t == name:
                return True
            if t.endswith("+"):
                base = t[:-1]
                uarch = archspec.cpu.TARGETS.get(name)
                if name == base or (uarch is not None and base in {a.name for a in uarch.ancestors}):
                    return True
        return False


@dataclass
class Policy:
    """Which node tags may be baked lazily. The first rule whose ``repositories``
    glob matches the repository decides; no matching rule: refused.

    ``targets`` entries: an archspec name, ``"*"`` (any target of the plan's
    family), or ``"NAME+"`` (NAME and every target that has it as an ancestor,
    e.g. ``x86_64_v3+`` takes haswell, zen3, icelake, x86_64_v4 ...).
    """

    rules: list[Rule]
    source: str = "default"

    @classmethod
    def default(cls) -> Policy:
        return cls([Rule(("*",), ("*",))], "default (all repositories, all targets of the plan's family)")

    @classmethod
    def load(cls, path: Path) -> Policy:
        import yaml

        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise BakeryError(f"policy {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise BakeryError(f"policy {path}: not YAML: {e}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc, source: str = "policy") -> Policy:
        if not isinstance(doc, dict) or set(doc) - {"rules"} or not isinstance(doc.get("rules"), list):
            raise BakeryError(f"{source}: expected a mapping with one key, 'rules', a list",
                              "see registry/README.md for the format")
        rules = []
        for i, r in enumerate(doc["rules"]):
            where = f"{source}: rules[{i}]"
            if not isinstance(r, dict) or set(r) - {"repositories", "targets", "slim"}:
                raise BakeryError(f"{where}: keys are repositories, targets and slim")
            repos, targets = r.get("repositories", ["*"]), r.get("targets", ["*"])
            for key, val in (("repositories", repos), ("targets", targets)):
                if isinstance(val, str):
                    val = [val]
                if not isinstance(val, list) or not all(isinstance(v, str) and v for v in val):
                    raise BakeryError(f"{where}.{key}: expected a list of strings")
            repos = [repos] if isinstance(repos, str) else repos
            targets = [targets] if isinstance(targets, str) else targets
            for t in targets:
                name = t[:-1] if t.endswith("+") else t
                if name != "*" and name not in archspec.cpu.TARGETS:
                    close = difflib.get_close_matches(name, archspec.cpu.TARGETS, n=3)
                    raise BakeryError(f"{where}.targets: {t!r} is not an archspec target"
                                      + (f" (did you mean {', '.join(close)}?)" if close else ""))
            slim = r.get("slim", True)
            if not isinstance(slim, bool):
                raise BakeryError(f"{where}.slim: expected true or false")
            rules.append(Rule(tuple(repos), tuple(targets), slim))
        return cls(rules, source)

    def allows(self, repo: str, node: NodeTag) -> str | None:
        """None when allowed, else the reason it is not."""
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(repo, g) for g in rule.repositories):
                if node.slim and not rule.slim:
                    return f"the policy ({self.source}) does not allow lazy -slim bakes of {repo}"
                if not rule.target_allowed(node.target):
                    return (f"the policy ({self.source}) does not allow lazy bakes of {repo} for {node.target} "
                            f"(allowed: {', '.join(rule.targets)})")
                return None
        return f"the policy ({self.source}) does not allow lazy bakes of {repo}"
