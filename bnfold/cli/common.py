"""Shared CLI plumbing: error translation, shape parsing, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def guarded(func: F) -> F:
    """Turn BnfoldError (and a few OS errors) into a one-line message and its exit code.

    Unexpected exceptions still surface as a one-line message with exit code 2, plus a
    hint to rerun with BNFOLD_DEBUG=1 for the traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bnfold.errors import EXIT_BAD_INPUT, BnfoldError

        try:
            return func(*args, **kwargs)
        except BnfoldError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except MemoryError:
            fail("out of memory", EXIT_BAD_INPUT)
        except OSError as err:  # e.g. disk full while writing outside the atomic save
            from bnfold.onnx.io.outputs import os_reason

            where = f"{err.filename}: " if err.filename else ""
            fail(f"{where}{os_reason(err)}", EXIT_BAD_INPUT)
        except Exception as err:  # the last line of defence: never a traceback
            import os

            if os.environ.get("BNFOLD_DEBUG"):
                raise
            fail(
                f"internal error: {type(err).__name__}: {err} (set BNFOLD_DEBUG=1 for details)",
                EXIT_BAD_INPUT,
            )

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int) -> None:
    """Print ``bnfold: error: message`` on one line to stderr and exit with ``code``."""
    first_line = " ".join(str(message).split())
    click.echo(f"bnfold: error: {first_line}", err=True)
    sys.exit(code)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` (or ``NAME:1,3,224,224``; the name may contain ':')."""
    import re

    from bnfold.errors import InputError

    name, sep, dims = text.rpartition(":")
    if not sep or not name or not re.fullmatch(r"\d+([x,]\d+)*", dims):
        raise InputError(f"bad shape {text!r}: expected NAME:1x3x224x224")
    return name, tuple(int(d) for d in re.split(r"[x,]", dims))


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout."""
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)
