"""``fold_onnx``: the Python entry point of the ONNX folder."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from bnfold.errors import InputError, ModelLoadError, OutputError
from bnfold.keep import KeepList
from bnfold.onnx.context import FoldOptions
from bnfold.onnx.io import files as io
from bnfold.onnx.io import validate
from bnfold.onnx.pipeline import SHAPES_INFERRED, run_pipeline
from bnfold.report import FoldReport


@dataclasses.dataclass
class OnnxFoldResult:
    """The folded model (same kind as given), its report, and ``save(path)``."""

    ir_model: ir.Model
    report: FoldReport
    source_kind: str  # "path" | "proto" | "ir"
    source_path: Path | None = None

    @property
    def model(self) -> Any:
        """``onnx.ModelProto`` for path/proto input, ``onnx_ir.Model`` for onnx-ir input."""
        if self.source_kind == "ir":
            return self.ir_model
        return ir.serde.serialize_model(self.ir_model)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite_input: bool = False,
        before_commit: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write atomically; refuses to overwrite the input unless ``overwrite_input``.

        ``before_commit(tmp_path)`` may inspect the written file and raise to cancel.
        """
        out = Path(path)
        source = self.source_path
        if source is not None and not overwrite_input and io.same_file(source, out):
            raise OutputError(
                f"{out}: output path is the input model; choose another path "
                "(or pass overwrite_input=True / --in-place)"
            )
        in_place = source is not None and io.same_file(source, out)
        return io.save_model(
            self.ir_model, out, before_commit=before_commit, replaces_source=in_place
        )

    def describe(self) -> str:
        return self.report.describe()


def fold_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto | ir.Model | bytes,
    *,
    allow_graph_input_params: bool = False,
    assume_eval: bool = False,
    rewrite_standalone: bool = False,
    max_iterations: int = 20,
    keep: Iterable[str] | str | None = None,
    keep_dropout: bool = False,
    progress: Callable[[str], None] | None = None,
    requantize: bool = False,
    quantize_bias: bool = False,
) -> OnnxFoldResult:
    """Fold every foldable BatchNorm and strip inference Dropout.

    ``rewrite_standalone`` also turns BN that fold nowhere into Mul/Add (slower in
    onnxruntime CPU, so off by default). ``keep`` (fnmatch globs on node names) and
    ``keep_dropout`` leave those BN/Dropout nodes as they are; the report lists them
    as ``kept`` ("kept by request"). ``progress(stage)`` is called as the ``"load"`` and
    ``"fold"`` stages start.

    Quantized (QDQ) models: a BN after a layer whose weight is behind a DequantizeLinear
    folds exactly into the weight's scales (the integer weights stay). ``requantize`` also
    folds BN between quantization pairs (``layer → Q → DQ → BN → Q → DQ``), dropping the
    inner pair: one rounding step fewer, so not exact. ``quantize_bias`` re-quantizes the
    folded biases to int32 (not bit-exact) instead of keeping them float.

    ``model`` may be a path, serialized bytes, an ``onnx.ModelProto`` or an
    ``onnx_ir.Model``; the input is never modified (onnx-ir input is cloned).
    """
    options = FoldOptions(
        allow_graph_input_params=allow_graph_input_params,
        assume_eval=assume_eval,
        rewrite_standalone=rewrite_standalone,
        max_iterations=max_iterations,
        keep=KeepList.of(keep, keep_dropout),
        requantize=requantize,
        quantize_bias=quantize_bias,
    )
    if progress is not None:
        progress("load")
    ir_model, kind, source_path = _to_ir(model)
    if progress is not None:
        progress("fold")
    report = run_pipeline(ir_model, options)
    if source_path is not None:
        validate.check_deferred_weights(ir_model, str(source_path))
    return OnnxFoldResult(ir_model, report, kind, source_path)


def _to_ir(model: Any) -> tuple[ir.Model, str, Path | None]:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        loaded = io.load_model(path, defer_weight_scan=True)
        loaded.graph.meta[SHAPES_INFERRED] = True
        return loaded, "path", path
    if isinstance(model, bytes):
        try:
            proto = onnx.load_from_string(model)
        except Exception as err:
            raise ModelLoadError(f"bytes are not a valid ONNX model ({err})") from err
        return _deserialize(proto, io.check_proto(proto, "model bytes")), "proto", None
    if isinstance(model, onnx.ModelProto):
        return _deserialize(model, io.check_proto(model, "model")), "proto", None
    if isinstance(model, ir.Model):
        return model.clone(), "ir", None
    raise InputError(
        f"cannot fold an object of type {type(model).__name__}; expected a path, bytes, "
        "onnx.ModelProto, onnx_ir.Model or torch.nn.Module"
    )


def _deserialize(proto: onnx.ModelProto, shapes: list[onnx.ValueInfoProto]) -> ir.Model:
    """The IR of ``proto`` (left untouched) with the inferred ``shapes`` applied."""
    model = ir.serde.deserialize_model(proto)
    values = {v.name: v for v in model.graph.inputs}
    values.update((v.name, v) for node in model.graph for v in node.outputs)
    for info in shapes:
        value = values.get(info.name)
        if value is not None and value.shape is None:
            ir.serde.deserialize_value_info_proto(info, value)
    model.graph.meta[SHAPES_INFERRED] = True
    return model
