"""Random linear-layer → BatchNorm graphs for property tests, built with :class:`GraphBuilder`.

A hypothesis strategy draws a :class:`Case` (plain data, printed on failure); ``build``
turns it into a checked ModelProto plus how many BNs must fold. Random values (weights,
BN statistics) come from a numpy generator seeded by the case, so shrinking acts on the
graph structure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st

from support.graphs import GraphBuilder

SPATIAL = ("Conv", "ConvTranspose")
DENSE = ("Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class Block:
    """One linear layer followed by a BatchNorm (and what sits around them)."""

    op: str
    c_out: int
    group: int = 1
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    output_padding: tuple[int, ...] = ()
    bias: bool = False  # Conv/ConvTranspose bias, Gemm C, MatMul + Add
    bias_shape: str = "vector"  # Gemm C / Add constant: "vector" (N,) or "row" (1, N)
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    dropout: bool = False  # layer → Dropout → BN
    extra: str | None = None  # layer output also used: "output" (a graph output) | "node"
    twin: bool = False  # a second layer shares the weight, with its own BN
    relu: bool = False
    epsilon: float = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
    """A whole test graph: spatial blocks, then (after Flatten) dense blocks."""

    dtype: str
    opset: int
    batch: int
    symbolic_batch: bool
    c_in: int
    spatial: tuple[int, ...]  # input spatial size (empty: a dense-only graph)
    blocks: tuple[Block, ...]
    seed: int
    tokens: int = 0  # > 0: a rank-3 MatMul on tokens whose BN normalises the token axis


# -- strategies -------------------------------------------------------------------------
@st.composite
def spatial_block(draw: Any, op: str, rank: int, c_in: int) -> Block:
    """Conv or ConvTranspose whose group divides ``c_in``."""
    group = draw(st.sampled_from([g for g in (1, 2, 3, c_in) if c_in % g == 0]))
    c_out = group * draw(st.integers(1, 3))
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    stride = tuple(draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel * 2)
    out_pad: tuple[int, ...] = ()
    if op == "ConvTranspose":
        out_pad = tuple(draw(st.integers(0, s - 1)) for s in stride)  # ORT: < stride
    return Block(
        op=op,
        c_out=c_out,
        group=group,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        pads=pads,
        output_padding=out_pad,
        **draw(_around()),
    )


@st.composite
def dense_block(draw: Any, op: str) -> Block:
    fields: dict[str, Any] = {"op": op, "c_out": draw(st.integers(1, 8))}
    if op == "Gemm":
        fields["trans_b"] = draw(st.booleans())
        fields["alpha"] = draw(st.sampled_from([1.0, 0.5, 2.0]))
        fields["beta"] = draw(st.sampled_from([1.0, 0.25]))
    fields["bias_shape"] = draw(st.sampled_from(["vector", "row"]))
    return Block(**fields, **draw(_around()))


@st.composite
def _around(draw: Any) -> dict[str, Any]:
    """What surrounds a layer: bias, Dropout, extra consumers, a weight-sharing twin."""
    extra = draw(st.sampled_from([None, None, None, "output", "node"]))
    return {
        "bias": draw(st.booleans()),
        "dropout": draw(st.booleans()),
        "extra": extra,
        "twin": extra is None and draw(st.integers(0, 5)) == 0,
        "relu": draw(st.booleans()),
        "epsilon": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
    }


@st.composite
def cases(draw: Any) -> Case:
    """A random graph: 0–2 spatial blocks, then 0–2 dense blocks (at least one block)."""
    family = draw(st.sampled_from(["spatial", "spatial", "dense", "mixed", "tokens"]))
    common: dict[str, Any] = {
        "opset": draw(st.sampled_from([13, 17, 21])),
        "batch": draw(st.integers(1, 2)),
        "symbolic_batch": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if family == "tokens":
        return Case(
            dtype=draw(st.sampled_from(["float32", "float16"])),
            c_in=draw(st.integers(2, 6)),
            spatial=(),
            blocks=(draw(dense_block("MatMul")),),
            tokens=draw(st.integers(2, 5)),
            **common,
        )
    c_in = c = draw(st.integers(1, 6))
    blocks: list[Block] = []
    spatial: tuple[int, ...] = ()
    if family in ("spatial", "mixed"):
        rank = draw(st.integers(1, 3))
        spatial = tuple(draw(st.lists(st.integers(3, 7 - rank), min_size=rank, max_size=rank)))
        size = spatial
        for _ in range(draw(st.integers(1, 2))):
            block = draw(spatial_block(draw(st.sampled_from(SPATIAL)), rank, c))
            size = _spatial_out(block, size)
            if min(size) < 1:
                break
            blocks.append(block)
            c = block.c_out
        if not blocks:
            ones = (1,) * rank
            blocks.append(Block("Conv", 2, 1, ones, ones, ones, (0,) * (2 * rank)))
    if family in ("dense", "mixed"):
        for _ in range(draw(st.integers(1, 2))):
            blocks.append(draw(dense_block(draw(st.sampled_from(DENSE)))))
    only_dense = all(b.op in DENSE for b in blocks)
    dtypes = ["float32", "float16", "float64"] if only_dense else ["float32", "float32", "float16"]
    return Case(
        dtype=draw(st.sampled_from(dtypes)),
        c_in=c_in,
        spatial=spatial,
        blocks=tuple(blocks),
        **common,
    )


def _spatial_out(block: Block, size: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i, n in enumerate(size):
        k, s, d = block.kernel[i], block.stride[i], block.dilation[i]
        begin, end = block.pads[i], block.pads[i + len(size)]
        if block.op == "Conv":
            out.append((n + begin + end - d * (k - 1) - 1) // s + 1)
        else:
            out.append(s * (n - 1) + block.output_padding[i] + (k - 1) * d + 1 - begin - end)
    return tuple(out)


# -- building --------------------------------------------------------------------------
@dataclasses.dataclass
class Built:
    """The model, the input shape to feed, and how many BNs must fold (at least)."""

    model: onnx.ModelProto
    input_shape: tuple[int, ...]
    must_fold: int
    bn_count: int


class _Builder:
    """Draws a case's layers into the one :class:`GraphBuilder` (values from the case's seed)."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.graph = GraphBuilder(case.seed, np.dtype(case.dtype))
        self.rng = self.graph.rng
        self.dtype = self.graph.dtype
        self.must_fold = 0
        self.bns = 0

    def name(self, base: str) -> str:
        return self.graph.fresh(base)

    def const(self, base: str, array: np.ndarray) -> str:
        return self.graph.const(self.name(base), np.asarray(array, self.dtype))

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.graph.node(op, inputs, name=f"{out}_node", outputs=[out], **attrs)
        return out

    def output(self, name: str, rank: int) -> None:
        self.graph.output(name, rank)

    # -- layers ---------------------------------------------------------------------------
    def weights(self, block: Block, c_in: int) -> tuple[list[str], dict[str, Any]]:
        """Initializer names (weight [, bias]) and attributes of ``block``'s layer."""
        rng, attrs = self.rng, {}
        if block.op in SPATIAL:
            k = list(block.kernel)
            fan_in = c_in // block.group * math.prod(k)
            if block.op == "Conv":
                shape = [block.c_out, c_in // block.group, *k]
            else:
                shape = [c_in, block.c_out // block.group, *k]
            attrs = {
                "group": block.group,
                "kernel_shape": k,
                "strides": list(block.stride),
                "dilations": list(block.dilation),
                "pads": list(block.pads),
            }
            if any(block.output_padding):
                attrs["output_padding"] = list(block.output_padding)
        else:
            fan_in = c_in
            shape = [block.c_out, c_in] if block.trans_b else [c_in, block.c_out]
            if block.op == "Gemm":
                attrs = {"transB": int(block.trans_b), "alpha": block.alpha, "beta": block.beta}
        names = [self.const("w", rng.normal(0, 1 / math.sqrt(fan_in), shape))]
        if block.bias:
            b_shape = (
                [1, block.c_out]
                if block.bias_shape == "row" and block.op in DENSE
                else [block.c_out]
            )
            names.append(self.const("b", rng.normal(0, 0.2, b_shape)))
        return names, attrs

    def layer(self, block: Block, x: str, names: list[str], attrs: dict[str, Any]) -> str:
        if block.op == "MatMul":
            y = self.node("MatMul", [x, names[0]])
            return self.node("Add", [y, names[1]]) if block.bias else y
        return self.node(block.op, [x, *names], **attrs)

    def batchnorm(self, x: str, channels: int, eps: float) -> str:
        rng, c = self.rng, channels
        gamma = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c, p=[0.3, 0.7])
        params = [
            self.const("gamma", gamma),
            self.const("beta", rng.normal(0, 0.5, c)),
            self.const("mean", rng.normal(0, 0.5, c)),
            self.const("var", np.exp(rng.uniform(math.log(0.05), math.log(4.0), c))),
        ]
        self.bns += 1
        return self.node("BatchNormalization", [x, *params], epsilon=eps)

    def dropout(self, x: str) -> str:
        if self.rng.integers(2):
            return self.node("Dropout", [x, self.const("ratio", np.array(0.3))])
        return self.node("Dropout", [x])

    def block(self, block: Block, x: str, c_in: int, rank: int) -> str:
        """layer [→ Dropout] → BN [→ Relu], plus extra consumers or a twin."""
        names, attrs = self.weights(block, c_in)
        y = self.layer(block, x, names, attrs)
        if block.extra == "output":
            self.output(y, rank)
        elif block.extra == "node":
            side = self.node("Neg", [y])
            self.output(side, rank)
        channels = self.case.tokens or block.c_out
        foldable = block.extra is None and not self.case.tokens and self.dtype != np.float16
        z = self.batchnorm(self.dropout(y) if block.dropout else y, channels, block.epsilon)
        self.must_fold += int(foldable)
        if block.twin:
            twin = self.batchnorm(self.layer(block, x, names, attrs), channels, block.epsilon)
            self.must_fold += int(foldable)
            z = self.node("Add", [z, twin])
        return self.node("Relu", [z]) if block.relu else z


def build(case: Case) -> Built:
    """The ModelProto of ``case`` (checked), its input shape and its fold expectations."""
    b = _Builder(case)
    batch: int | str = "N" if case.symbolic_batch else case.batch
    dims = [case.tokens, case.c_in] if case.tokens else [case.c_in, *case.spatial]
    x, c, size = "x", case.c_in, case.spatial
    for block in case.blocks:
        if block.op in DENSE and size:
            x, c, size = b.node("Flatten", [x], axis=1), c * math.prod(size), ()
        rank = len(size) + 2 + (1 if case.tokens else 0)
        x = b.block(block, x, c, rank)
        c = block.c_out
        if block.op in SPATIAL:
            size = _spatial_out(block, size)
    b.output(x, len(size) + 2 + (1 if case.tokens else 0))
    g = b.graph
    g.input("x", [batch, *dims])
    g.outputs.reverse()
    model = g.build(case.opset, graph_name="prop", producer_name=None)
    return Built(model, (case.batch, *dims), b.must_fold, b.bns)
