"""Waiting for a state in the dashboard tests: poll from Python with a generous deadline.

The page's CSP forbids eval, so ``page.wait_for_function`` (which compiles its predicate in the page)
cannot be used; ``page.evaluate`` of an expression goes through the DevTools protocol and is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(pred: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Return once ``pred()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def until_js(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Return once the page's JS ``expression`` is truthy."""
    until(lambda: page.evaluate(expression), expression, timeout)
