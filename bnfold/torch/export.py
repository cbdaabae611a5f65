"""One call from a PyTorch module to a folded, verified ONNX file.

``export_and_fold`` exports with BatchNorm left in the graph (dynamo with ``optimize=False``,
or the legacy exporter with ``do_constant_folding=False``), folds it with the ONNX pipeline,
saves the result, and verifies folded vs exported in onnxruntime (ORT_DISABLE_ALL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bnfold.errors import InputError, NotEquivalentError

logger = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "legacy"]


class ExportError(InputError):
    """torch.onnx.export failed for this module."""


@dataclasses.dataclass
class ExportFoldResult:
    """Where the files went, which exporter ran, the ONNX fold result and the verification."""

    path: Path
    exporter: str
    fold: Any  # bnfold.onnx.api.OnnxFoldResult
    verification: Any | None  # bnfold.equivalence.result.VerifyResult
    unfolded_path: Path | None = None

    @property
    def report(self) -> Any:
        return self.fold.report

    def __bool__(self) -> bool:
        return self.verification is None or bool(self.verification)

    def describe(self) -> str:
        lines = [f"exported with the {self.exporter} exporter, folded model: {self.path}"]
        lines.append(self.fold.report.describe())
        if self.verification is not None:
            lines.append(self.verification.describe())
        return "\n".join(lines)


def export_and_fold(
    module: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    exporter: Exporter = "auto",
    opset: int = 18,
    unfolded_path: str | Path | None = None,
    verify: bool = True,
    strict: bool = False,
    **fold_options: Any,
) -> ExportFoldResult:
    """Export ``module`` to ONNX, fold it with :func:`bnfold.onnx.api.fold_onnx`, verify it.

    ``exporter="auto"`` tries dynamo, then the legacy (TorchScript) exporter. The unfolded
    export is kept at ``unfolded_path`` when given. ``strict`` raises NotEquivalentError when
    verification fails. ``fold_options`` go to ``fold_onnx``.
    """
    from bnfold.equivalence.api import verify as verify_models
    from bnfold.onnx.api import fold_onnx

    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    names = input_names(module, len(inputs))
    out = Path(path)
    with contextlib.ExitStack() as stack:
        if unfolded_path is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bnfold-export-")))
            raw = tmp / "unfolded.onnx"
        else:
            raw = Path(unfolded_path)
        used = export_unfolded(module, inputs, raw, exporter=exporter, opset=opset, names=names)
        folded = fold_onnx(raw, **fold_options)
        folded.save(out)
        verification = None
        if verify:
            feeds = {n: _numpy(x) for n, x in zip(names, inputs, strict=True)}
            verification = verify_models(raw, out, inputs=[feeds])
    result = ExportFoldResult(
        out, used, folded, verification, None if unfolded_path is None else raw
    )
    if strict and not result:
        raise NotEquivalentError(result.describe())
    return result


def export_unfolded(
    module: nn.Module,
    inputs: tuple[Any, ...],
    path: Path,
    *,
    exporter: Exporter = "auto",
    opset: int = 18,
    names: list[str] | None = None,
) -> str:
    """Export with BN kept as BatchNormalization nodes; returns the exporter that succeeded."""
    model = module.eval()
    names = names or input_names(module, len(inputs))
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    errors = []
    for kind in order:
        try:
            if kind == "dynamo":
                quiet = io.StringIO() if exporter == "auto" else None
                with _silenced(quiet):
                    program = _dynamo_export(model, inputs, opset, names)
                program.save(str(path))
            elif kind == "legacy":
                torch.onnx.export(
                    model,
                    inputs,
                    str(path),
                    dynamo=False,
                    do_constant_folding=False,
                    opset_version=min(opset, 17),
                    input_names=names,
                )
            else:
                raise InputError(f"unknown exporter {kind!r}: use 'auto', 'dynamo' or 'legacy'")
        except InputError:
            raise
        except Exception as exc:  # exporters raise many unrelated types
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            logger.info("%s export failed: %s", kind, exc)
            continue
        return kind
    raise ExportError("torch.onnx.export failed: " + "; ".join(errors))


def _dynamo_export(model: nn.Module, inputs: tuple[Any, ...], opset: int, names: list[str]) -> Any:
    program = torch.onnx.export(
        model,
        inputs,
        dynamo=True,
        optimize=False,
        opset_version=opset,
        input_names=names,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    return program


def input_names(module: nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``forward`` (or input_0…)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= count and len(set(positional[:count])) == count:
        return positional[:count]
    return [f"input_{i}" for i in range(count)]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@contextlib.contextmanager
def _silenced(sink: io.StringIO | None) -> Any:
    """Swallow the exporter's console report of a failed attempt (``auto`` retries anyway)."""
    if sink is None:
        yield
        return
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
