"""Helpers for test suites: ``assert_equivalent`` for pytest users.

``assert_equivalent("model.onnx", "model.folded.onnx", seeds=5)`` passes silently when
the models are equivalent and raises AssertionError with the full report otherwise.
:mod:`bnfold.testing.zoo` holds small plain-torch models with BatchNorm for tests and
benchmarks (it needs torch, so it is imported only where asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnfold.equivalence.result import VerifyResult


__all__ = ["assert_equivalent"]


def assert_equivalent(reference: Any, candidate: Any, **options: Any) -> VerifyResult:
    """Verify two ONNX models; raise AssertionError with the full report when they differ.

    Options are those of :func:`bnfold.equivalence.api.verify` (``inputs``, ``shapes``,
    ``seeds``, ``rtol``, ``atol``, ``output_tolerances``, ``provider``, ``floor_factor``,
    ``measure_floor``).
    Returns the (passing) result.
    """
    __tracebackhide__ = True  # pytest: point at the caller, not at this helper
    from bnfold.equivalence.api import verify

    result = verify(reference, candidate, **options)
    if not result:
        raise AssertionError("models are not equivalent\n" + result.describe())
    return result
