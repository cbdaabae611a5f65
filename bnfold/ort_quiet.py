"""Keep onnxruntime's own log lines off the user's terminal.

onnxruntime prints a coloured ``[E:onnxruntime:…]`` line for a failing kernel even with
``set_default_logger_severity(3)``: errors are severity 3, and the session's own logger
decides. Every session bnfold creates therefore gets ``log_severity_level = 4`` (fatal
only), and the process-wide default logger is raised once. onnxruntime's errors still
reach the user, inside bnfold's one-line messages.
"""

from __future__ import annotations

import functools
from typing import Any

FATAL_ONLY = 4


def quiet_session_options() -> Any:
    """``onnxruntime.SessionOptions`` that log nothing below fatal."""
    import onnxruntime as ort

    silence_default_logger()
    options = ort.SessionOptions()
    options.log_severity_level = FATAL_ONLY
    return options


def quiet_run_options() -> Any:
    """``onnxruntime.RunOptions`` that log nothing below fatal."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = FATAL_ONLY
    return options


@functools.cache
def silence_default_logger() -> None:
    """Raise onnxruntime's process-wide logger to fatal (once per process)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(FATAL_ONLY)
