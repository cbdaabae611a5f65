"""Equivalence verification of two ONNX models in onnxruntime (ORT_DISABLE_ALL).

``verify(reference, candidate)`` returns a :class:`VerifyResult` that is truthy when every
output matches on every input set; the judgement rule is in :mod:`bnfold.verify.compare`.

Importing this package binds ``bnfold.verify`` to the package, replacing the public
function of the same name; the package is therefore callable and forwards to
:func:`bnfold.verify.api.verify`, so ``bnfold.verify(ref, cand)`` keeps working.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from bnfold.verify.api import verify
from bnfold.verify.result import OutputComparison, VerifyResult

__all__ = ["OutputComparison", "VerifyResult", "verify"]


class _CallablePackage(types.ModuleType):
    """A module whose call is ``verify(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> VerifyResult:
        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
