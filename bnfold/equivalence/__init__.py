"""Equivalence verification of two ONNX models in onnxruntime (ORT_DISABLE_ALL).

``verify(reference, candidate)`` returns a :class:`VerifyResult` that is truthy when every
output matches on every input set; the judgement rule is in
:mod:`bnfold.equivalence.compare`. The public entry point is ``bnfold.verify(...)``.
"""

from __future__ import annotations

from bnfold.equivalence.api import verify
from bnfold.equivalence.result import OutputComparison, VerifyResult

__all__ = ["OutputComparison", "VerifyResult", "verify"]
