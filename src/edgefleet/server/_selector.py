"""Device selectors: ``class=pi4 region=eu-*`` over tags and hardware profile.

Grammar: whitespace-separated terms, all of which must hold. ``key=glob`` (``a,b`` means either),
``key!=glob``; globs use ``*`` and ``?``. ``*`` alone (or an empty selector) selects every device.
Built-in keys: ``class`` (device class), ``arch``, ``id``, ``name``, ``version`` (active version),
``model`` (active model name); any other key is a tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from edgefleet.errors import InputError

__all__ = ["Selector", "BUILTIN_KEYS"]

BUILTIN_KEYS = ("class", "arch", "id", "name", "version", "model")
_TERM = re.compile(r"^([A-Za-z0-9_.\-/]{1,64})(!=|=)([^\s=!]{1,256})$")
_HINT = "write terms like 'class=pi4 region=eu-*' (key=glob, key!=glob, a,b for either)"


@dataclass(frozen=True)
class _Term:
    key: str
    negate: bool
    patterns: tuple[str, ...]

    def matches(self, value: str | None) -> bool:
        hit = value is not None and any(fnmatchcase(value, p) for p in self.patterns)
        return not hit if self.negate else hit


class Selector:
    """A parsed selector; ``Selector.parse(text)`` raises ``InputError`` on a malformed one."""

    def __init__(self, text: str, terms: tuple[_Term, ...]) -> None:
        self.text = text
        self.terms = terms

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        text = (text or "").strip()
        if len(text) > 1024:
            raise InputError("selector is longer than 1024 characters", hint=_HINT)
        if text in ("", "*"):
            return cls("*", ())
        terms = []
        for raw in text.split():
            m = _TERM.match(raw)
            if not m:
                raise InputError(f"selector term {raw!r} is not key=value or key!=value", hint=_HINT)
            key, op, value = m.groups()
            patterns = tuple(p for p in value.split(",") if p)
            if not patterns:
                raise InputError(f"selector term {raw!r} has no value", hint=_HINT)
            terms.append(_Term(key, op == "!=", patterns))
        return cls(" ".join(sorted(text.split())), tuple(terms))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def matches(self, attrs: Mapping[str, str | None]) -> bool:
        """True when every term holds for a device's attributes (see ``device_attrs``)."""
        return all(t.matches(attrs.get(t.key)) for t in self.terms)

    def may_overlap(self, other: Selector) -> bool:
        """False only when no device could match both selectors (conservative: unsure means True)."""
        mine: dict[str, list[_Term]] = {}
        for t in self.terms:
            if not t.negate:
                mine.setdefault(t.key, []).append(t)
        for t in other.terms:
            if t.negate:
                continue
            for m in mine.get(t.key, ()):
                if not any(_globs_may_meet(a, b) for a in m.patterns for b in t.patterns):
                    return False
        return True


def device_attrs(
    *,
    device_id: str,
    name: str | None,
    device_class: str,
    arch: str,
    tags: Mapping[str, Any] | None,
    active_version: str | None = None,
    active_name: str | None = None,
) -> dict[str, str | None]:
    """The key/value view of a device that selectors match against (built-ins win over tags)."""
    attrs: dict[str, str | None] = {str(k): str(v) for k, v in (tags or {}).items()}
    attrs.update(
        {
            "class": device_class,
            "arch": arch,
            "id": device_id,
            "name": name,
            "version": active_version,
            "model": active_name,
        }
    )
    return attrs


def group_of(dev: Any, groups: Iterable[Any]) -> Any | None:
    """The first of ``groups`` (rows with a ``selector``, in priority order) whose selector matches the
    device row ``dev``; None when none does (sample, device-policy groups)."""
    attrs = device_attrs(
        device_id=dev.id,
        name=dev.name,
        device_class=dev.device_class,
        arch=dev.arch,
        tags=dev.tags,
        active_version=dev.active_version,
        active_name=dev.active_name,
    )
    return next((g for g in groups if Selector.parse(g.selector).matches(attrs)), None)


def _literal_prefix(p: str) -> tuple[str, bool]:
    for i, ch in enumerate(p):
        if ch in "*?[":
            return p[:i], True
    return p, False


def _globs_may_meet(a: str, b: str) -> bool:
    pa, wild_a = _literal_prefix(a)
    pb, wild_b = _literal_prefix(b)
    if not wild_a and not wild_b:
        return a == b
    if not wild_a:
        return fnmatchcase(a, b)
    if not wild_b:
        return fnmatchcase(b, a)
    if not (pa.startswith(pb) or pb.startswith(pa)):
        return False
    sa, _ = _literal_prefix(a[::-1])
    sb, _ = _literal_prefix(b[::-1])
    return sa.startswith(sb) or sb.startswith(sa)
