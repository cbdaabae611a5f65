"""Exceptions raised by bnfold; each maps to a CLI exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_EQUIVALENT = 1
EXIT_BAD_INPUT = 2


class BnfoldError(Exception):
    """Base class of every error bnfold raises on purpose."""

    exit_code: int = EXIT_BAD_INPUT


class InputError(BnfoldError):
    """The model, file or option given by the user cannot be used."""


class ModelLoadError(InputError):
    """A model file is missing, unreadable, not ONNX, or structurally invalid."""


class ExternalDataError(InputError):
    """External tensor data is missing, truncated, or points outside the model folder."""


class OutputError(BnfoldError):
    """The output cannot be written (same as input, unwritable folder, disk full)."""


class VerificationError(BnfoldError):
    """Verification could not run (e.g. the two models' inputs or outputs do not match)."""


class NotEquivalentError(BnfoldError):
    """The folded model does not match the original within tolerance."""

    exit_code = EXIT_NOT_EQUIVALENT


class DependencyError(BnfoldError):
    """An optional dependency (torch, onnxruntime-gpu) is needed but not installed."""
