"""Turn the models users pass (path, bytes, ModelProto, onnx_ir.Model) into what ORT loads."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bnfold.equivalence.skeleton import Skeleton, split
from bnfold.errors import ModelLoadError, VerificationError

logger = logging.getLogger(__name__)

ModelLike = Any  # str | os.PathLike | bytes | onnx.ModelProto | onnx_ir.Model
_PROTO_LIMIT = 2**31 - 2**24  # stay clear of protobuf's 2 GB ceiling
IN_MEMORY_LIMIT = 2**30  # beyond this, no whole-model copies (probes, weight jitter)


@dataclasses.dataclass
class ModelSource:
    """A model ready for onnxruntime: a file path (external data works) or serialized bytes.

    With ``initializers``, the payload is a skeleton's structure and those arrays are its
    large initializers (see :mod:`bnfold.equivalence.skeleton`).
    """

    label: str
    payload: str | bytes
    _proto: onnx.ModelProto | None = None
    initializers: Mapping[str, np.ndarray] | None = None

    def graph_proto(self) -> onnx.ModelProto:
        """The model's structure without external weights (for light inspection)."""
        if self._proto is None:
            try:
                if isinstance(self.payload, bytes):
                    self._proto = onnx.load_from_string(self.payload)
                else:
                    self._proto = onnx.load(self.payload, load_external_data=False)
            except Exception as err:
                raise ModelLoadError(f"cannot read {self.label}: {_first_line(err)}") from err
        return self._proto

    def approx_bytes(self) -> int:
        """Model size including external data files (what an in-memory copy would cost)."""
        if isinstance(self.payload, bytes):
            arrays = self.initializers or {}
            return len(self.payload) + sum(a.nbytes for a in arrays.values())
        path = Path(self.payload)
        total = path.stat().st_size
        seen: set[str] = set()
        for tensor in onnx.external_data_helper._get_all_tensors(self.graph_proto()):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location and location not in seen:
                seen.add(location)
                with contextlib.suppress(OSError):
                    total += (path.parent / location).stat().st_size
        return total

    def skeleton(self) -> Skeleton:
        """The model split into structure and large initializers (no whole-model copy)."""
        if self.initializers is not None:
            return Skeleton(self.graph_proto(), self.initializers)
        base = "" if isinstance(self.payload, bytes) else os.path.dirname(self.payload)
        try:
            return split(self.graph_proto(), base)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot read {self.label}: {_first_line(err)}") from err

    def full_proto(self) -> onnx.ModelProto:
        """The whole model, weights included (external data is read from disk)."""
        if self.initializers is not None:
            return join(self.skeleton())
        if isinstance(self.payload, bytes):
            return self.graph_proto()
        try:
            return onnx.load(self.payload, load_external_data=True)
        except Exception as err:
            raise ModelLoadError(f"cannot read {self.label}: {_first_line(err)}") from err


@contextlib.contextmanager
def open_model(model: ModelLike, role: str) -> Iterator[ModelSource]:
    """Yield a ModelSource; temporary files (for onnx_ir models with external data) are removed."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{role} model not found: {path}")
        yield ModelSource(str(path), str(path))
        return
    if isinstance(model, (bytes, bytearray)):
        yield ModelSource(f"{role} (bytes)", bytes(model))
        return
    if isinstance(model, onnx.ModelProto):
        yield ModelSource(f"{role} (ModelProto)", _serialize(model, role), model)
        return
    if _is_ir_model(model):
        with _ir_source(model, role) as source:
            yield source
        return
    raise ModelLoadError(
        f"{role} model must be a path, bytes, onnx.ModelProto or onnx_ir.Model, "
        f"not {type(model).__name__}"
    )


@contextlib.contextmanager
def open_proto(proto: onnx.ModelProto, label: str) -> Iterator[ModelSource]:
    """A ModelSource for an in-memory model; over 2 GB it goes through a temporary file."""
    if proto.ByteSize() < _PROTO_LIMIT:
        yield ModelSource(label, proto.SerializeToString(), proto)
        return
    with tempfile.TemporaryDirectory(prefix="bnfold-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save_model(proto, path, save_as_external_data=True, location="model.onnx.data")
        yield ModelSource(label, path)


@contextlib.contextmanager
def open_skeleton(skeleton: Skeleton, label: str) -> Iterator[ModelSource]:
    """A ModelSource whose large initializers reach onnxruntime as arrays, not bytes."""
    proto = skeleton.proto
    yield ModelSource(label, _serialize(proto, label), proto, dict(skeleton.arrays))


def join(skeleton: Skeleton) -> onnx.ModelProto:
    """The whole model again: the skeleton's arrays put back inline."""
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(skeleton.proto)
    for tensor in proto.graph.initializer:
        array = skeleton.arrays.get(tensor.name)
        if array is not None:
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return proto


def _serialize(proto: onnx.ModelProto, role: str) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as err:  # protobuf refuses messages over 2 GB
        raise VerificationError(
            f"{role} model is too large to pass in memory (over 2 GB): save it with external "
            "data and pass its path"
        ) from err


def _is_ir_model(model: Any) -> bool:
    try:
        import onnx_ir as ir
    except ImportError:  # pragma: no cover - onnx-ir is a dependency
        return False
    return isinstance(model, ir.Model)


@contextlib.contextmanager
def _ir_source(model: Any, role: str) -> Iterator[ModelSource]:
    import onnx_ir as ir

    has_external = any(
        isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()
    )
    if not has_external:
        proto = ir.to_proto(model)
        if proto.ByteSize() < _PROTO_LIMIT:
            yield ModelSource(f"{role} (onnx_ir.Model)", _serialize(proto, role), proto)
            return
    # External or huge weights: write a temporary copy ORT can load by path.
    with tempfile.TemporaryDirectory(prefix="bnfold-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        logger.debug("wrote %s model to %s for verification", role, path)
        yield ModelSource(f"{role} (onnx_ir.Model)", path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
