"""interrupts_deferred: Ctrl-C inside the block is delivered once it ends, never lost."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from bnfold.onnx.io import shield


def test_ctrl_c_inside_the_block_is_raised_after_it() -> None:
    done: list[str] = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), shield.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("first")
            done.append("second")  # still runs: the interrupt waits for the block
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == ["first", "second"]


def test_no_interrupt_means_no_signal_and_the_handler_is_restored() -> None:
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with shield.interrupts_deferred():
            pass
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == []


def test_outside_the_main_thread_the_body_runs_unshielded() -> None:
    errors: list[BaseException] = []
    ran: list[bool] = []

    def body() -> None:
        try:
            with shield.interrupts_deferred():  # signal.signal would raise ValueError here
                ran.append(True)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert ran == [True] and errors == []


def test_a_handler_not_set_from_python_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """getsignal gives None for a handler installed outside Python: it could not be put
    back, so it is never replaced."""
    replaced: list[object] = []
    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: replaced.append(handler))
    ran = False
    with shield.interrupts_deferred():
        ran = True
    assert ran and replaced == []
