"""A pytest plugin that turns a skip hiding broken in-tree code into a failure.

A skip is for a missing external service or optional extra, with its reason. It is never for an
``edgefleet`` module that fails to import (code moved, a name renamed, a syntax error), which would
otherwise turn a real regression into a quiet "s" in the summary. Three guards:

* ``pytest.importorskip("edgefleet...")`` imports the module for real: an error fails the test.
* a skip raised while an ``ImportError`` of an ``edgefleet`` module is being handled fails the test.
* a skip whose reason says an ``edgefleet`` module could not be imported fails the test (or module).

Loaded by ``tests/conftest.py``; ``tests/test_no_silent_skips.py`` proves it with pytester.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

IN_TREE = "edgefleet"
_PREFIX = "in-tree code was skipped, which hides a real failure: "
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_IMPORT_OF = re.compile(r"\bimport\w*\s+(?:name\s+'?\w+'?\s+from\s+)?'?(edgefleet[\w.]*)")
_IMPORT_WORDS = re.compile(r"import|not (present|available|installed)", re.IGNORECASE)
_ORIGINAL: list[Any] = []


def in_tree(modname: str | None) -> bool:
    return bool(modname) and (modname == IN_TREE or modname.startswith(IN_TREE + "."))


def in_tree_reason(reason: str) -> str | None:
    """Why a skip's reason text shows an in-tree import failure, or None when it is a legitimate skip."""
    missing = _NO_MODULE.search(reason)
    if missing:  # the module actually missing decides: an extra (torch) is fine, edgefleet.x is not
        return reason if in_tree(missing.group(1)) else None
    if _IMPORT_OF.search(reason):
        return reason
    if re.search(rf"\b{IN_TREE}\b", reason) and _IMPORT_WORDS.search(reason):
        return reason
    return None


def in_tree_skip(exc: BaseException) -> str | None:
    """Why this Skipped exception hides an in-tree import failure, or None."""
    seen: set[int] = set()
    ctx = exc.__context__ or exc.__cause__
    while ctx is not None and id(ctx) not in seen:
        seen.add(id(ctx))
        if isinstance(ctx, ImportError) and in_tree(ctx.name):
            return f"{ctx.name} failed to import: {ctx}"
        ctx = ctx.__context__ or ctx.__cause__
    return in_tree_reason(str(getattr(exc, "msg", None) or exc))


def _guarded_importorskip(modname: str, *args: Any, **kwargs: Any) -> Any:
    __tracebackhide__ = True
    if in_tree(modname):
        return importlib.import_module(modname)  # in-tree code must import; an error fails the test
    return _ORIGINAL[0](modname, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    # nested runs (pytester) install it again: keep pytest's own function as the one to call
    _ORIGINAL.append(pytest.importorskip)
    pytest.importorskip = _guarded_importorskip


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ORIGINAL:
        pytest.importorskip = _ORIGINAL.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    rep = yield
    if rep.skipped and call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        why = in_tree_skip(call.excinfo.value)
        if why:
            rep.outcome = "failed"
            rep.longrepr = _PREFIX + why
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    rep = yield
    if rep.skipped and isinstance(rep.longrepr, tuple):
        why = in_tree_reason(str(rep.longrepr[2]))
        if why:
            rep.outcome = "failed"
            rep.longrepr = _PREFIX + why
    return rep
