"""bnfold: fold BatchNorm into neighbouring linear layers and strip Dropout, exactly.

Public API::

    import bnfold
    result = bnfold.fold("model.onnx")        # or an onnx.ModelProto, onnx_ir.Model, nn.Module
    result.save("model.folded.onnx")
    print(result.report.describe())
    ok = bnfold.verify("model.onnx", "model.folded.onnx")   # truthy when equivalent
    timing = bnfold.bench("model.folded.onnx")

Heavy dependencies (onnxruntime, torch) are imported only when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from bnfold.errors import (
    BnfoldError,
    InputError,
    NotEquivalentError,
    OutputError,
    VerificationError,
)
from bnfold.report import FoldReport, ReportEntry

__all__ = [
    "BnfoldError",
    "FoldReport",
    "InputError",
    "NotEquivalentError",
    "OutputError",
    "ReportEntry",
    "VerificationError",
    "__version__",
    "bench",
    "fold",
    "verify",
]


def fold(model: Any, **options: Any) -> Any:
    """Fold BatchNorm and strip Dropout in an ONNX model, ``nn.Module`` or exported program.

    ONNX input (a path, ``onnx.ModelProto`` or ``onnx_ir.Model``) returns an
    :class:`bnfold.onnx.api.OnnxFoldResult`; an ``nn.Module`` returns a
    :class:`bnfold.torch.api.TorchFoldResult`; a ``torch.export.ExportedProgram`` (or a
    ``.pt2`` path; ``trust_pickle=True`` to load one that needs unpickling) returns a
    :class:`bnfold.export.api.ProgramFoldResult`. All carry ``.model``, ``.report``
    and ``.save(path)``.
    """
    if _is_torch_module(model):
        from bnfold.torch.api import fold_module

        return fold_module(model, **options)
    if _is_exported_program(model) or str(model).endswith(".pt2"):
        from bnfold.export.api import fold_program

        if not _is_exported_program(model):
            from bnfold.export.archive import load_program

            trust = bool(options.pop("trust_pickle", False))
            model = load_program(model, trust_pickle=trust)
        return fold_program(model, **options)
    from bnfold.onnx.api import fold_onnx

    return fold_onnx(model, **options)


def verify(reference: Any, candidate: Any, **options: Any) -> Any:
    """Compare two ONNX models in onnxruntime (ORT_DISABLE_ALL); see bnfold.equivalence.api."""
    from bnfold.equivalence.api import verify as _verify

    return _verify(reference, candidate, **options)


def bench(model: Any, **options: Any) -> Any:
    """Measure onnxruntime latency of a model (optionally against another); see bnfold.latency."""
    from bnfold.latency.api import bench as _bench

    return _bench(model, **options)


def _is_exported_program(obj: Any) -> bool:
    import sys

    export = sys.modules.get("torch.export")
    return export is not None and isinstance(obj, export.ExportedProgram)


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)
