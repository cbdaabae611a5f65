"""Hold Ctrl-C back across a few statements that must finish together (a commit's renames)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the body with SIGINT noted, not raised; deliver it once the body is done.

    Python raises KeyboardInterrupt between any two bytecodes, so without this a Ctrl-C
    can land between two renames that only make sense together. The signal is re-raised
    under the previous handler when the block exits, whatever that handler is. Outside
    the main thread (where handlers cannot be changed), or when the handler was not set
    from Python (it could not be put back), the body runs unshielded.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: Any) -> None:
        received.append(signum)

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)
