"""Where ``edgefleet demo`` tells its progress: ``Narrator`` logs, ``RichNarrator`` draws on a console."""

from __future__ import annotations

import logging
import time
from typing import Any

from edgefleet.sim._demo_config import BAD, GOOD, NEW

__all__ = ["Narrator", "RichNarrator"]

log = logging.getLogger(__name__)


class Narrator:
    """Receives the demo's progress; the base class only logs."""

    def step(self, text: str) -> None:
        log.info("%s", text)

    def note(self, text: str) -> None:
        log.info("  %s", text)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        log.info("%s: %d rows", title, len(rows))

    def live_start(self) -> None:
        pass

    def live(self, header: str, columns: list[str], rows: list[list[str]]) -> None:
        pass

    def live_stop(self) -> None:
        pass


class RichNarrator(Narrator):
    """Narration on a rich console: a line per step, a live device table while rollouts run."""

    STYLES = {GOOD: "cyan", NEW: "green", BAD: "bold red"}

    def __init__(self, console: Any, *, live: bool | None = None) -> None:
        self.console = console
        self.use_live = console.is_terminal if live is None else live
        self._live: Any = None
        self.t0 = time.monotonic()

    def _ts(self) -> str:
        return f"[dim]{time.monotonic() - self.t0:6.1f}s[/]"

    def step(self, text: str) -> None:
        self.console.print(f"{self._ts()} [bold]●[/] {text}", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"         {text}", highlight=False)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.console.print(self._table(title, columns, rows))

    def _table(self, title: str, columns: list[str], rows: list[list[str]]) -> Any:
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*[self._style(x) for x in r])
        return t

    def _style(self, x: str) -> str:
        s = self.STYLES.get(x)
        return f"[{s}]{x}[/]" if s else x

    def live_start(self) -> None:
        if self.use_live and self._live is None:
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.start()

    def live(self, header: str, columns: list[str], rows: list[list[str]]) -> None:
        if self._live is None:
            return
        from rich.console import Group

        self._live.update(Group(header, self._table("", columns, rows)), refresh=True)

    def live_stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
