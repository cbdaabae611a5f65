"""A progress bar on stderr that appears only once a benchmark has run for a while."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

DELAY_S = 1.5


class RoundProgress:
    """Counts benchmark rounds; shows a rich bar on stderr when it is worth showing.

    ``enabled=None`` (auto) shows the bar once ``DELAY_S`` has passed, if stderr is a
    terminal; ``True`` shows it at once wherever stderr goes; ``False`` never does.
    """

    def __init__(self, description: str, enabled: bool | None = None, console: Any = None):
        self.description = description
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self._console = console
        self._start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def add_total(self, rounds: int) -> None:
        self.total += rounds
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def set_description(self, description: str) -> None:
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def advance(self) -> None:
        self.done += 1
        if self._bar is None and self._should_show():
            self._open()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> RoundProgress:
        if self.enabled:
            self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _should_show(self) -> bool:
        if self.enabled is False:
            return False
        if self.enabled is None and not sys.stderr.isatty():
            return False
        return time.perf_counter() - self._start >= DELAY_S

    def _open(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = self._console or Console(stderr=True)
        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)
