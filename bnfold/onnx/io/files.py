"""Loading and saving ONNX models safely: validated inputs, memory-mapped external data,
atomic writes (temp folder + rename), automatic external data for models over 2 GB."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir

from bnfold.errors import (
    BnfoldError,
    ExternalDataError,
    ModelLoadError,
    OutputError,
    VerificationError,
)
from bnfold.onnx.io import lite, mapped, outputs, shield, sniff, stream_save, validate

PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_THRESHOLD = PROTOBUF_LIMIT - 64 * 1024**2  # leave room for the graph itself


def load_model(path: str | os.PathLike[str], *, defer_weight_scan: bool = False) -> ir.Model:
    """Load a model file into onnx-ir with external data memory-mapped.

    Raises ModelLoadError / ExternalDataError with a one-line message for any bad file.
    ``defer_weight_scan``: leave the NaN/Inf scan of linear-layer weights to
    ``validate.check_deferred_weights`` (a fold proves the weights it rewrites finite, so
    only those left unfolded need the scan).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an ONNX model file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read ({err.strerror})") from err
    if size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    mapped_model = mapped.read_mapped(path)
    proto, external = load_proto(path, mapped_model.proto if mapped_model else None)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as err:
        raise ModelLoadError(f"{path}: model structure is invalid ({_one_line(err)})") from err
    if mapped_model is not None:
        mapped.attach(model, mapped_model.weights)
    if external:  # a walk over every tensor: only worth it when some data is elsewhere
        ir.external_data.set_base_dir(model.graph, str(path.parent))
    validate.validate_model(model, str(path), defer_weight_scan=defer_weight_scan)
    return model


def load_proto(path: Path, parsed: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, bool]:
    """Parse the protobuf (no external data) and run the structural ONNX checker.

    ``parsed``: the file already parsed (e.g. with its weights memory-mapped). Returns the
    proto and whether any of its tensors keeps its data in an external file.
    """
    try:
        proto = parsed if parsed is not None else onnx.load(str(path), load_external_data=False)
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read ({outputs.os_reason(err)})") from err
    except Exception as err:  # DecodeError, RuntimeError, … on garbage or a cut-off file
        raise ModelLoadError(f"{path}: {_not_onnx(path, err)}") from err
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and not proto.graph.output):
        raise ModelLoadError(f"{path}: {_not_onnx(path, None)}")
    tensors = list(_all_tensors(proto))
    validate.validate_proto(proto, str(path), tensors)
    check_external_data(proto, path.parent, str(path), tensors)
    proto.graph.value_info.extend(check_proto(proto, str(path)))  # our own copy
    return proto, any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors)


def _not_onnx(path: Path, err: BaseException | None) -> str:
    """Why a file is not ONNX: a recognised foreign format, else corrupt/truncated protobuf."""
    kind = sniff.foreign_format(path)
    if kind is not None:
        return f"not an ONNX model: the file is {kind}"
    if err is None:
        return "not an ONNX model: no graph found (truncated, or not an ONNX file)"
    return f"not a valid ONNX model: data is corrupt or truncated ({_one_line(err)})"


def check_proto(proto: onnx.ModelProto, label: str) -> list[onnx.ValueInfoProto]:
    """Run onnx's structural checker (on a weight-free copy); raise ModelLoadError on failure.

    Returns the inferred shapes of untyped main-graph values (ranks let MatMul/layout folds
    prove axes); ``proto`` itself is not modified.
    """
    try:
        return lite.check_and_infer(proto)
    except Exception as err:  # onnx.checker.ValidationError and friends
        raise ModelLoadError(f"{label}: fails the ONNX checker: {_one_line(err)}") from err


def check_external_data(
    proto: onnx.ModelProto,
    base_dir: Path,
    label: str = "model",
    tensors: list[onnx.TensorProto] | None = None,
) -> None:
    """Refuse external data that is missing, truncated, or outside the model's folder.

    Escaping locations are refused from their text and resolved path alone: never opened.
    ``tensors``: every tensor of ``proto``, when the caller already listed them.
    """
    base = base_dir.resolve()
    for tensor in _all_tensors(proto) if tensors is None else tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        what = f"{label}: tensor '{tensor.name}' external data '{location}'"
        if not location:
            raise ExternalDataError(f"{label}: tensor '{tensor.name}' has no data location")
        if os.path.isabs(location) or location.startswith(("/", "\\")):
            raise ExternalDataError(f"{what} is an absolute path; refused")
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise ExternalDataError(f"{what} escapes the model folder; refused")
        if not target.is_file():
            raise ExternalDataError(f"{what} is missing")
        links = target.stat().st_nlink
        if links > 1:
            raise ExternalDataError(
                f"{what} has {links} hard links; refused (a hard link can expose files from "
                "outside the folder): copy it"
            )
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        need = offset + (int(length) if length else validate.tensor_bytes(tensor) or 0)
        have = target.stat().st_size
        if need > have:
            raise ExternalDataError(f"{what} is truncated (needs {need} bytes, file has {have})")


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
    replaces_source: bool = False,
) -> Path:
    """Write ``model`` atomically; external data (``<name>.data``) beside it when needed.

    ``external_data=None`` decides automatically: external when the input had external
    data or the weights exceed the 2 GB protobuf limit. ``before_commit`` is called with
    the fully written temporary model path before anything is moved into place; if it
    raises, nothing is written. The data file never takes the name of a file the input
    or the replaced output still reads, so an interrupted commit cannot pair a model
    with foreign weights.
    ``replaces_source`` (in-place) lets the input's own stale data file be removed.
    """
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    check_output_path(out, folder)
    if external_data is None:
        external_data = has_external_tensors(model) or model_bytes(model) > EXTERNAL_THRESHOLD
    sources = outputs.source_data_files(model)
    replaced = outputs.referenced_data_files(out)
    data_name = outputs.data_file_name(out, sources | replaced) if external_data else None
    # The name is chosen before the folder exists, so a Ctrl-C at any point after this
    # line still finds (and removes) whatever was created.
    tmp = folder / f".{out.name}.{secrets.token_hex(6)}.bnfold-tmp"
    try:
        try:
            tmp.mkdir()
        except OSError as err:
            raise OutputError(f"{folder}: cannot write there ({outputs.os_reason(err)})") from err
        tmp_model = _write_checked(model, tmp, out, data_name, before_commit)
        # Ctrl-C is held back until the output and its data are both in place and the
        # replaced output's stale data is gone: never a model without its weights.
        with shield.interrupts_deferred():
            _commit(tmp, tmp_model, out, data_name)
            keep = {(folder / data_name).resolve()} if data_name else set()
            if not replaces_source:
                keep |= sources
            stale = outputs.owned_data_files(out, replaced)
            outputs.remove_quietly(p for p in stale if p not in keep)
    except BnfoldError:
        raise
    except OSError as err:
        raise OutputError(f"{out}: {outputs.os_reason(err)}; nothing written") from err
    except Exception as err:
        if _caused_by_interrupt(err):
            raise KeyboardInterrupt from err  # a library turned Ctrl-C into another error
        raise OutputError(f"{out}: write failed ({_one_line(err)}); nothing written") from err
    finally:
        _remove_tree(tmp)
    return out


def _caused_by_interrupt(err: BaseException) -> bool:
    """True when a KeyboardInterrupt is somewhere in ``err``'s cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _remove_tree(path: Path) -> None:
    """Remove a temporary folder, finishing the job even if Ctrl-C lands meanwhile."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except KeyboardInterrupt:
        shutil.rmtree(path, ignore_errors=True)
        raise


def check_output_path(out: Path, folder: Path) -> None:
    """Refuse outputs that cannot be written, before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: output folder is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable (permission denied)")
    if out.is_dir():
        raise OutputError(f"{out}: output path is a directory")


def _write_checked(
    model: ir.Model,
    tmp: Path,
    out: Path,
    data_name: str | None,
    before_commit: Callable[[Path], None] | None,
) -> Path:
    """Write the model (and its data file) into ``tmp`` and run ``before_commit`` on it."""
    tmp_model = tmp / out.name
    if data_name is None:
        stream_save.write_inline(model, tmp_model)  # no full-model protobuf copy
    else:
        ir.save(model, tmp_model, external_data=data_name)
    if before_commit is not None:
        try:
            before_commit(tmp_model)
        except BnfoldError:
            raise
        except Exception as err:  # not a write failure: say what failed
            raise VerificationError(
                f"{out}: not written: the check before writing failed "
                f"({type(err).__name__}: {_one_line(err)})"
            ) from err
    return tmp_model


def _commit(tmp: Path, tmp_model: Path, out: Path, data_name: str | None) -> None:
    """Rename the written files into place: the data file first, the model last.

    No fsync: os.replace is atomic against crashes and interrupts (never a partial file);
    a flush to disk would cost more than folding a 100 MB model. After a power loss the
    previous file (or none) is there, never a torn one on journaling file systems.
    """
    if data_name is None:
        os.replace(tmp_model, out)
        return
    data = out.parent / data_name  # a fresh name: no model reads it yet
    os.replace(tmp / data_name, data)
    try:
        os.replace(tmp_model, out)
    except BaseException:
        outputs.remove_quietly([data])
        raise


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name the same file (or would, once ``b`` exists)."""
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]
