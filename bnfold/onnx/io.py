"""Loading and saving ONNX models safely: validated inputs, memory-mapped external data,
atomic writes (temp folder + rename), automatic external data for models over 2 GB."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from bnfold.errors import BnfoldError, ExternalDataError, ModelLoadError, OutputError
from bnfold.onnx import lite

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_THRESHOLD = PROTOBUF_LIMIT - 64 * 1024**2  # leave room for the graph itself


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Load a model file into onnx-ir with external data memory-mapped.

    Raises ModelLoadError / ExternalDataError with a one-line message for any bad file.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX model file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read ({err.strerror})") from err
    if size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    proto = load_proto(path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as err:
        raise ModelLoadError(f"{path}: model structure is invalid ({_one_line(err)})") from err
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    return model


def load_proto(path: Path) -> onnx.ModelProto:
    """Parse the protobuf (no external data) and run the structural ONNX checker."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as err:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_one_line(err)})") from err
    except Exception as err:  # protobuf raises a variety of errors on garbage
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_one_line(err)})") from err
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and not proto.graph.output):
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found)")
    check_external_data(proto, path.parent)
    check_proto(proto, str(path))
    return proto


def check_proto(proto: onnx.ModelProto, label: str) -> None:
    """Run onnx's structural checker (on a weight-free copy); raise ModelLoadError on failure.

    Also records inferred shapes in ``proto`` (ranks let MatMul/layout folds prove axes).
    """
    try:
        lite.check(proto)
        lite.infer_shapes_into(proto)
    except onnx.checker.ValidationError as err:
        raise ModelLoadError(f"{label}: fails the ONNX checker: {_one_line(err)}") from err
    except Exception as err:
        raise ModelLoadError(f"{label}: fails the ONNX checker: {_one_line(err)}") from err


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data that is missing, truncated, or outside the model's folder."""
    base = base_dir.resolve()
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise ExternalDataError(f"tensor '{tensor.name}' has external data with no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")):
            raise ExternalDataError(
                f"tensor '{tensor.name}' external data path '{location}' is absolute; refused"
            )
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise ExternalDataError(
                f"tensor '{tensor.name}' external data '{location}' escapes the model folder; "
                "refused"
            )
        if not target.is_file():
            raise ExternalDataError(f"tensor '{tensor.name}' external data '{location}' is missing")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        need = offset + (int(length) if length else _expected_bytes(tensor))
        have = target.stat().st_size
        if need > have:
            raise ExternalDataError(
                f"tensor '{tensor.name}' external data '{location}' is truncated "
                f"(needs {need} bytes, file has {have})"
            )


def _expected_bytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        return 0
    return count * itemsize


def _all_tensors(proto: onnx.ModelProto):  # type: ignore[no-untyped-def]
    yield from onnx.external_data_helper._get_all_tensors(proto)


def model_bytes(model: ir.Model) -> int:
    """Total bytes of all initializers (every graph), for the 2 GB decision."""
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def has_external_tensors(model: ir.Model) -> bool:
    """True when any initializer lives in an external data file."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                return True
    return False


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` atomically; external data (``<name>.data``) beside it when needed.

    ``external_data=None`` decides automatically: external when the input had external
    data or the weights exceed the 2 GB protobuf limit. ``before_commit`` is called with
    the fully written temporary model path before anything is moved into place; if it
    raises, nothing is written.
    """
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{folder}: output folder is not writable")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if external_data is None:
        external_data = has_external_tensors(model) or model_bytes(model) > EXTERNAL_THRESHOLD
    data_name = f"{out.name}.data" if external_data else None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".bnfold-tmp", dir=folder))
    except OSError as err:
        raise OutputError(f"{folder}: cannot write ({err.strerror})") from err
    try:
        tmp_model = tmp / out.name
        ir.save(model, tmp_model, external_data=data_name)
        if before_commit is not None:
            before_commit(tmp_model)
        if data_name is not None:
            os.replace(tmp / data_name, folder / data_name)
        os.replace(tmp_model, out)
    except BnfoldError:
        raise
    except OSError as err:
        raise OutputError(f"{out}: write failed ({err.strerror or err}); nothing written") from err
    except Exception as err:
        raise OutputError(f"{out}: write failed ({_one_line(err)}); nothing written") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name the same file (or would, once ``b`` exists)."""
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]
