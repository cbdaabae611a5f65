"""The one ONNX graph builder of the test suite, and random BatchNorm parameters.

:class:`GraphBuilder` collects nodes, initializers and graph I/O and assembles a checked
ModelProto; every test graph goes through it. :class:`Builder` is a compact front end on it
(nodes named for their op and numbered, I/O declared when the model is made), and the
property-test strategies (:mod:`support.prop_graphs`) drive it from a drawn case.

Every BatchNorm built here has randomised γ (both signs), β, μ and σ²: the defaults
γ=1, β=0, μ=0, σ²=1 hide folding bugs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
BFLOAT16 = TensorProto.BFLOAT16


# -- random parameters ---------------------------------------------------------------------
def make_bn_params(
    c: int,
    rng: np.random.Generator,
    dtype: Any = np.float32,
    *,
    negative: float | None = None,
    spread: float = 1.0,
    var: tuple[float, float] = (0.3, 2.5),
) -> dict[str, np.ndarray]:
    """Random BN γ, β, μ, σ²: |γ| in [0.5, 2], β and μ ~ N(0, spread²), σ² in ``var``.

    γ is negative with probability ``negative`` (``None``: an even draw of signs).
    """
    p = None if negative is None else [negative, 1.0 - negative]
    sign = rng.choice([-1.0, 1.0], size=c, p=p)
    return {
        "scale": (sign * rng.uniform(0.5, 2.0, c)).astype(dtype),
        "bias": rng.normal(0.0, spread, c).astype(dtype),
        "mean": rng.normal(0.0, spread, c).astype(dtype),
        "var": rng.uniform(var[0], var[1], c).astype(dtype),
    }


def bn_params(rng: np.random.Generator, c: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """:class:`Builder`'s draw: γ negative 30% of the time, β, μ ~ N(0, 0.7²), σ² in [0.2, 3]."""
    return make_bn_params(c, rng, dtype, negative=0.3, spread=0.7, var=(0.2, 3.0))


def rand(rng: np.random.Generator, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Normal(0, 0.5) values of ``shape``."""
    return rng.normal(0.0, 0.5, tuple(shape)).astype(dtype)


# -- the builder ---------------------------------------------------------------------------
class GraphBuilder:
    """Collects nodes, initializers and I/O; ``build()`` returns a checked ModelProto."""

    def __init__(self, seed: int = 0, dtype: Any = np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    @property
    def elem(self) -> int:
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    def fresh(self, base: str) -> str:
        """``base`` with the next number of this builder appended."""
        self._count += 1
        return f"{base}{self._count}"

    def input(self, name: str, shape: Sequence[int | str], elem: int | None = None) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem or self.elem, list(shape)))
        return name

    def output(self, name: str, rank: int | None, elem: int | None = None) -> str:
        """A graph output of known rank (dims left unknown); ``rank=None``: untyped."""
        if rank is None:
            self.outputs.append(onnx.ValueInfoProto(name=name))
            return name
        shape = [None] * rank
        self.outputs.append(helper.make_tensor_value_info(name, elem or self.elem, shape))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer holding ``array`` (as given, no dtype change)."""
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: Sequence[int]) -> str:
        """A random initializer in the builder's dtype."""
        return self.const(name, rand(self.rng, shape, self.dtype))

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        n_out: int = 1,
        name: str | None = None,
        outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> str:
        """Append a node; returns its first output name."""
        name = name or self.fresh(op.lower())
        outs = list(outputs) if outputs is not None else [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0]

    def bn(
        self,
        x: str,
        c: int,
        name: str | None = None,
        params: dict[str, np.ndarray] | None = None,
        output: str | None = None,
        extra_outputs: Sequence[str] = (),
        **attrs: Any,
    ) -> str:
        """BatchNormalization with random parameters (or ``params``) over ``c`` channels."""
        name = name or self.fresh("bn")
        p = params if params is not None else make_bn_params(c, self.rng, self.dtype)
        names = [self.const(f"{name}.{k}", p[k]) for k in ("scale", "bias", "mean", "var")]
        outputs = [output or f"{name}_out0", *extra_outputs]
        return self.node("BatchNormalization", [x, *names], name=name, outputs=outputs, **attrs)

    def build(
        self,
        opset: int = OPSET,
        ir_version: int = 8,
        check: bool = True,
        *,
        graph_name: str = "g",
        producer_name: str | None = "bnfold-tests",
        infer_shapes: bool = False,
    ) -> onnx.ModelProto:
        """The model (shape-inferred strictly when ``infer_shapes``), checked unless told not."""
        graph = helper.make_graph(
            self.nodes, graph_name, self.inputs, self.outputs, initializer=self.initializers
        )
        meta = {} if producer_name is None else {"producer_name": producer_name}
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version, **meta
        )
        if infer_shapes:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        if check:
            onnx.checker.check_model(model, full_check=True)
        return model


class Builder:
    """A compact front end on :class:`GraphBuilder`: ``op()`` names each node for its op and a
    number and uses that name as its first output; ``model()`` declares the I/O and returns a
    strictly shape-inferred, checked model."""

    def __init__(self, seed: int = 0, dtype: Any = np.float32) -> None:
        self.graph = GraphBuilder(seed, dtype)

    @property
    def rng(self) -> np.random.Generator:
        return self.graph.rng

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.graph.dtype

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return self.graph.nodes

    @property
    def inits(self) -> list[onnx.TensorProto]:
        return self.graph.initializers

    def name(self, base: str) -> str:
        return self.graph.fresh(base)

    def const(self, array: np.ndarray, base: str = "c") -> str:
        return self.graph.const(self.name(base), array)

    def weight(self, shape: Sequence[int], base: str = "w", scale: float = 0.5) -> str:
        return self.const(self.rng.normal(0, scale, tuple(shape)).astype(self.dtype), base)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> str:
        name = self.name(op_type.lower())
        outs = [name] + [f"{name}_out{i}" for i in range(1, n_out)]
        self.graph.node(op_type, inputs, name=name, outputs=outs, **attrs)
        return name

    def bn(self, x: str, c: int, eps: float = 1e-5, **attrs: Any) -> str:
        """A BatchNormalization with random statistics (:func:`bn_params`)."""
        p = bn_params(self.rng, c, self.dtype)
        names = [self.const(p[k], f"bn_{k}") for k in ("scale", "bias", "mean", "var")]
        return self.op("BatchNormalization", [x, *names], epsilon=eps, **attrs)

    def model(
        self,
        inputs: Mapping[str, Sequence[int | str]],
        outputs: Sequence[str],
        opset: int = OPSET,
        elem: int | None = None,
    ) -> onnx.ModelProto:
        """Typed inputs, untyped outputs (shape inference types them), checked."""
        g = self.graph
        g.inputs, g.outputs = [], []
        for name, shape in inputs.items():
            g.input(name, shape, elem)
        for name in outputs:
            g.output(name, None)
        return g.build(opset, producer_name=None, infer_shapes=True)
