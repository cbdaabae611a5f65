"""The progress bar: shown when forced, never when off or when stderr is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from bnfold.latency import progress
from bnfold.latency.progress import RoundProgress


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=80), buffer


def test_forced_bar_is_drawn():
    con, buffer = console()
    with RoundProgress("level disable", enabled=True, console=con) as bar:
        bar.add_total(3)
        assert bar.shown
        for _ in range(3):
            bar.advance()
    assert not bar.shown
    assert "level disable" in buffer.getvalue()


def test_disabled_bar_never_appears(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    con, buffer = console()
    with RoundProgress("x", enabled=False, console=con) as bar:
        bar.add_total(2)
        bar.advance()
        assert not bar.shown
    assert buffer.getvalue() == ""


def test_auto_bar_waits_for_a_terminal_and_the_delay(monkeypatch):
    con, _ = console()
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    bar = RoundProgress("x", enabled=None, console=con)
    bar.add_total(2)
    bar.advance()
    assert not bar.shown  # a quick run shows nothing
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    bar.advance()
    assert bar.shown
    bar.close()


def test_auto_bar_stays_off_without_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    bar = RoundProgress("x", enabled=None, console=console()[0])
    bar.advance()
    assert not bar.shown
