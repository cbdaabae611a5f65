"""Checking helpers for the ONNX folding tests (graphs are built with :mod:`support.graphs`).

Every numeric comparison runs onnxruntime with ``ORT_DISABLE_ALL`` on both sides
(onnxruntime fuses Conv+BN itself at its default level, which would hide folding bugs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

from bnfold.report import ReportEntry

ModelLike = onnx.ModelProto | ir.Model | bytes | str | os.PathLike[str]


# -- running and comparing -----------------------------------------------------------------
def to_proto(model: ModelLike) -> onnx.ModelProto:
    """Any model form as a ModelProto (paths load external data)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.serde.serialize_model(model)
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model))


def session(model: ModelLike) -> ort.InferenceSession:
    """An onnxruntime CPU session with every graph optimisation disabled."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if isinstance(model, (str, os.PathLike)):
        source: Any = os.fspath(model)
    else:
        source = to_proto(model).SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_run(model: ModelLike, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` under ORT_DISABLE_ALL; outputs by name."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def random_feeds(
    model: ModelLike, rng: np.random.Generator, batch: int = 2
) -> dict[str, np.ndarray]:
    """Random values for every real graph input (symbolic dims become ``batch``)."""
    proto = to_proto(model)
    inits = {t.name for t in proto.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        ttype = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in ttype.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if dtype == np.bool_:
            feeds[vi.name] = np.zeros(shape, dtype=np.bool_)
        else:
            feeds[vi.name] = rng.normal(0.0, 1.0, shape).astype(dtype)
    return feeds


def max_error(ref: np.ndarray, cand: np.ndarray) -> float:
    """max |ref − cand| relative to max |ref| (floored at 1e-3)."""
    r, c = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-3)
    return float(np.max(np.abs(r - c), initial=0.0)) / scale


def assert_close(ref: np.ndarray, cand: np.ndarray, tol: float = 1e-4, what: str = "") -> None:
    """Same shape and dtype; max abs error ≤ ``tol`` × output scale (exact for bools)."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    assert ref.shape == cand.shape, f"{what}: shape {cand.shape} != {ref.shape}"
    assert ref.dtype == cand.dtype, f"{what}: dtype {cand.dtype} != {ref.dtype}"
    if ref.dtype == np.bool_ or np.issubdtype(ref.dtype, np.integer):
        np.testing.assert_array_equal(cand, ref, err_msg=what)
        return
    err = max_error(ref, cand)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def assert_equivalent(
    reference: ModelLike, candidate: ModelLike, seeds: Iterable[int] = (0, 1, 2), tol: float = 1e-4
) -> None:
    """Both models give the same outputs (by name) on several random input sets."""
    ref_sess, cand_sess = session(reference), session(candidate)
    ref_names = [o.name for o in ref_sess.get_outputs()]
    assert [o.name for o in cand_sess.get_outputs()] == ref_names
    for seed in seeds:
        feeds = random_feeds(reference, np.random.default_rng(seed))
        ref_out = ref_sess.run(ref_names, feeds)
        cand_out = cand_sess.run(ref_names, feeds)
        for name, r, c in zip(ref_names, ref_out, cand_out, strict=True):
            assert_close(r, c, tol, f"output {name!r} (seed {seed})")


# -- inspecting graphs ---------------------------------------------------------------------
def op_types(model: ModelLike) -> list[str]:
    """Op types of the main graph's nodes, in order."""
    return [n.op_type for n in to_proto(model).graph.node]


def op_count(model: ModelLike, op: str) -> int:
    return op_types(model).count(op)


def node_named(model: ModelLike, name: str) -> onnx.NodeProto:
    matches = [n for n in to_proto(model).graph.node if n.name == name]
    assert len(matches) == 1, f"expected one node named {name!r}, found {len(matches)}"
    return matches[0]


def initializer_array(model: ModelLike, name: str) -> np.ndarray:
    for t in to_proto(model).graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def used_initializers(model: ModelLike) -> dict[str, bytes]:
    """Serialized bytes of every initializer a node reads."""
    proto = to_proto(model)
    used = {i for n in proto.graph.node for i in n.input}
    return {
        t.name: numpy_helper.to_array(t).tobytes()
        for t in proto.graph.initializer
        if t.name in used
    }


def graph_signature(model: ModelLike) -> tuple[list[tuple[Any, ...]], dict[str, bytes]]:
    """Nodes (op, inputs, outputs, attributes) and the bytes of the initializers they read."""
    proto = to_proto(model)
    nodes = [
        (
            n.op_type,
            tuple(n.input),
            tuple(n.output),
            tuple(sorted(a.SerializeToString() for a in n.attribute)),
        )
        for n in proto.graph.node
    ]
    return nodes, used_initializers(proto)


def assert_unchanged(original: ModelLike, folded: ModelLike) -> None:
    """The folded graph computes exactly what the original does, node for node."""
    assert graph_signature(folded) == graph_signature(original)


def is_topologically_sorted(model: ModelLike) -> bool:
    proto = to_proto(model)
    g = proto.graph
    known = {""} | {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        if any(i not in known for i in n.input):
            return False
        known.update(n.output)
    return True


def assert_hygiene(original: ModelLike, folded: ModelLike) -> None:
    """Names of graph I/O, opsets, metadata and doc strings kept; checker and topo order OK."""
    a, b = to_proto(original), to_proto(folded)
    assert [i.name for i in b.graph.input] == [i.name for i in a.graph.input]
    assert [o.name for o in b.graph.output] == [o.name for o in a.graph.output]
    opsets = {(o.domain or "ai.onnx", o.version) for o in a.opset_import}
    assert {(o.domain or "ai.onnx", o.version) for o in b.opset_import} == opsets
    assert [(p.key, p.value) for p in b.metadata_props] == [
        (p.key, p.value) for p in a.metadata_props
    ]
    assert b.doc_string == a.doc_string
    assert b.graph.doc_string == a.graph.doc_string
    assert b.producer_name == a.producer_name
    assert b.ir_version == a.ir_version
    onnx.checker.check_model(b, full_check=True)
    assert is_topologically_sorted(b)


def entry(report: Any, name: str) -> ReportEntry:
    """The report entry of the node called ``name``."""
    matches = [e for e in report.entries if e.name == name]
    assert len(matches) == 1, f"expected one report entry {name!r}: {report.describe()}"
    return matches[0]


def assert_left(report: Any, name: str, *fragments: str) -> ReportEntry:
    """``name`` was left, with a reason containing every fragment (case-insensitive)."""
    e = entry(report, name)
    assert e.status == "left", f"{name} was {e.status}, expected left"
    reason = (e.reason or "").lower()
    for fragment in fragments:
        assert fragment.lower() in reason, f"{fragment!r} not in reason {e.reason!r}"
    return e
