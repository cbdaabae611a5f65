"""A corpus of bad inputs: each writer makes one broken model file and says what is wrong.

The good base model is Conv → BN → Relu → Dropout with random BN statistics; every bad
variant changes exactly one thing, so the error message must name that one thing.
``snapshot`` and ``assert_one_line_error`` check that a refusal left the files alone and said
one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

OPSET = 17
C_IN, C_OUT = 3, 6


@dataclasses.dataclass
class BadInput:
    """A broken model at ``path`` whose error message must contain every ``expect`` fragment."""

    path: Path
    expect: tuple[str, ...]


def bn_arrays(rng: np.random.Generator, c: int = C_OUT) -> dict[str, np.ndarray]:
    """Random γ (both signs), β, μ, σ² ∈ [0.2, 3]."""
    return {
        "gamma": (rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)).astype(np.float32),
        "beta": rng.normal(0, 1, c).astype(np.float32),
        "mean": rng.normal(0, 1, c).astype(np.float32),
        "var": rng.uniform(0.2, 3.0, c).astype(np.float32),
    }


def good_model(
    seed: int = 0, *, bn: dict[str, np.ndarray] | None = None, weight: np.ndarray | None = None
) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv → BN('bn') → Relu → Dropout → Add(offset) → y, random values.

    The 1.5 kB ``offset`` is never folded, so saving with external data keeps a data file.
    """
    rng = np.random.default_rng(seed)
    w = weight if weight is not None else rng.normal(0, 0.3, (C_OUT, C_IN, 3, 3))
    arrays = {"W": w.astype(np.float32), "B": rng.normal(0, 0.1, C_OUT).astype(np.float32)}
    arrays.update(bn if bn is not None else bn_arrays(rng))
    arrays["offset"] = rng.normal(0, 0.1, (1, C_OUT, 8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(
            "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="bn"
        ),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r"], ["d"], name="drop"),
        helper.make_node("Add", ["d", "offset"], ["y"], name="shift"),
    ]
    graph = helper.make_graph(
        nodes,
        "robust",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_IN, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C_OUT, 8, 8])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    """Save with every initializer in one external file (``location`` relative to ``path``)."""
    location = location or f"{path.name}.data"
    onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def _set_location(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """Point every external tensor at ``location`` (offsets kept)."""
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    return model


def _external_with_location(folder: Path, name: str, location: str) -> Path:
    """A model whose external data claims to live at ``location``; real data saved beside it."""
    path = save_external(good_model(), folder / name)
    model = onnx.load(path, load_external_data=False)
    return save(_set_location(model, location), path)


# -- the corpus ---------------------------------------------------------------------------
def _missing_file(d: Path) -> BadInput:
    return BadInput(d / "absent.onnx", ("absent.onnx", "no such file"))


def _directory(d: Path) -> BadInput:
    (d / "dir.onnx").mkdir()
    return BadInput(d / "dir.onnx", ("dir.onnx", "folder"))


def _empty(d: Path) -> BadInput:
    (d / "empty.onnx").write_bytes(b"")
    return BadInput(d / "empty.onnx", ("empty.onnx", "empty"))


def _truncated(d: Path) -> BadInput:
    data = good_model().SerializeToString()
    (d / "truncated.onnx").write_bytes(data[: len(data) * 2 // 3])
    return BadInput(d / "truncated.onnx", ("truncated.onnx", "truncated"))


def _random_bytes(d: Path) -> BadInput:
    rng = np.random.default_rng(7)
    (d / "random.onnx").write_bytes(b"\x12\xff" + rng.bytes(4096))
    return BadInput(d / "random.onnx", ("random.onnx", "not a valid ONNX model"))


def _image(d: Path) -> BadInput:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    (d / "photo.onnx").write_bytes(png)
    return BadInput(d / "photo.onnx", ("photo.onnx", "PNG image"))


def _checker_failure(d: Path) -> BadInput:
    model = good_model()
    model.graph.node[0].op_type = "Convolution"  # no such operator
    return BadInput(save(model, d / "checker.onnx"), ("checker.onnx", "ONNX checker"))


def _bn_wrong_length(d: Path) -> BadInput:
    bn = bn_arrays(np.random.default_rng(1))
    bn["mean"] = bn["mean"][:4]
    model = good_model(bn=bn)
    return BadInput(save(model, d / "bn_length.onnx"), ("'bn'", "lengths do not match"))


def _bn_all_wrong_length(d: Path) -> BadInput:
    bn = bn_arrays(np.random.default_rng(1), c=C_OUT + 2)  # consistent, but ≠ channels
    model = good_model(bn=bn)
    return BadInput(save(model, d / "bn_channels.onnx"), ("'bn'", f"{C_OUT} channels"))


def _negative_variance(d: Path) -> BadInput:
    bn = bn_arrays(np.random.default_rng(2))
    bn["var"][3] = -0.5
    return BadInput(
        save(good_model(bn=bn), d / "negvar.onnx"), ("'bn'", "variance is negative", "channel 3")
    )


def _nan_bn(d: Path) -> BadInput:
    bn = bn_arrays(np.random.default_rng(3))
    bn["gamma"][1] = np.nan
    return BadInput(save(good_model(bn=bn), d / "nan_bn.onnx"), ("'bn'", "scale", "NaN/Inf"))


def _inf_weight(d: Path) -> BadInput:
    w = np.random.default_rng(4).normal(0, 0.3, (C_OUT, C_IN, 3, 3))
    w[2, 1, 0, 0] = np.inf
    model = good_model(weight=w)
    return BadInput(save(model, d / "inf_w.onnx"), ("Conv 'conv'", "'W'", "NaN/Inf"))


def _missing_initializer(d: Path) -> BadInput:
    model = good_model()
    keep = [t for t in model.graph.initializer if t.name != "beta"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return BadInput(save(model, d / "no_init.onnx"), ("'bn'", "'beta'", "missing initializer"))


def _unknown_opset(d: Path) -> BadInput:
    model = good_model()
    model.opset_import[0].version = 9999
    return BadInput(save(model, d / "opset.onnx"), ("opset 9999", "unknown opset"))


def _unknown_domain(d: Path) -> BadInput:
    model = good_model()
    model.graph.node[2].domain = "com.example.mystery"
    model.opset_import.append(helper.make_opsetid("com.example.mystery", 1))
    return BadInput(save(model, d / "domain.onnx"), ("com.example.mystery", "unknown operator"))


def _external_missing(d: Path) -> BadInput:
    path = save_external(good_model(), d / "ext_missing.onnx")
    (d / "ext_missing.onnx.data").unlink()
    return BadInput(path, ("ext_missing.onnx.data", "missing"))


def _external_truncated(d: Path) -> BadInput:
    path = save_external(good_model(), d / "ext_trunc.onnx")
    data = d / "ext_trunc.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    return BadInput(path, ("ext_trunc.onnx.data", "truncated"))


def _external_parent(d: Path) -> BadInput:
    (d.parent / "secret.data").write_bytes(b"\0" * 4096)
    path = _external_with_location(d, "ext_parent.onnx", "../secret.data")
    return BadInput(path, ("../secret.data", "escapes the model folder"))


def _external_absolute(d: Path) -> BadInput:
    target = d.parent / "absolute.data"
    target.write_bytes(b"\0" * 4096)
    path = _external_with_location(d, "ext_abs.onnx", str(target))
    return BadInput(path, ("absolute",))


def _external_symlink(d: Path) -> BadInput:
    target = d.parent / "linked.data"
    target.write_bytes(b"\0" * 4096)
    os.symlink(target, d / "inside.data")
    path = _external_with_location(d, "ext_link.onnx", "inside.data")
    return BadInput(path, ("inside.data", "escapes the model folder"))


CORPUS: dict[str, Callable[[Path], BadInput]] = {
    "missing-file": _missing_file,
    "directory": _directory,
    "empty-file": _empty,
    "truncated": _truncated,
    "random-bytes": _random_bytes,
    "image-renamed": _image,
    "checker-failure": _checker_failure,
    "bn-param-wrong-length": _bn_wrong_length,
    "bn-params-vs-channels": _bn_all_wrong_length,
    "negative-variance": _negative_variance,
    "nan-bn-param": _nan_bn,
    "inf-weight": _inf_weight,
    "missing-initializer": _missing_initializer,
    "unknown-opset": _unknown_opset,
    "unknown-domain": _unknown_domain,
    "external-missing": _external_missing,
    "external-truncated": _external_truncated,
    "external-parent-dir": _external_parent,
    "external-absolute": _external_absolute,
    "external-symlink-escape": _external_symlink,
}


# -- checking refusals -----------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder`` (symlinks by target)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_symlink():
            out[str(path.relative_to(folder))] = f"-> {path.readlink()}"
        elif path.is_dir():
            out[str(path.relative_to(folder)) + "/"] = "dir"
    return out


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line ``bnfold: error: …`` holding every fragment."""
    assert result.exit_code == 2, (result.output, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("bnfold: error: "), line
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
