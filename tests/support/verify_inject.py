"""A small reference folder for tests: Conv/ConvTranspose/Gemm → BN, with injectable bugs.

It is deliberately independent of bnfold.fold so the verifier can be tested on its own.
Each bug mimics a mistake a real folder can make; ``bug=None`` gives a correct fold.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold import foldmath

logger = logging.getLogger(__name__)

BUGS = (
    "eps_ignored",  # s = γ/√σ²
    "mean_sign",  # t = β + μ·s
    "scale_twice",  # W' = W·s²
    "bias_dropped",  # the layer's own bias b is lost: b' = −μ·s + β
    "beta_dropped",  # BN's β is lost: b' = (b − μ)·s
    "channel_off",  # one output channel's weights × (1 + 1e-3)
    "ct_first_group",  # ConvTranspose: every group scaled with group 0's scales
    "ct_interleaved",  # ConvTranspose: output channel o taken as j·g + gi
    "gemm_beta_kept",  # Gemm: bias folded but the Gemm's beta ≠ 1 left in place
)
PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def fold_batchnorms(
    model: onnx.ModelProto, bug: str | None = None, target: int = 0, channel: int = 0
) -> onnx.ModelProto:
    """Fold every foldable BN into its producer; inject ``bug`` into the ``target``-th fold."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    producers = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    graph_outputs = {o.name for o in graph.output}

    def const(name: str) -> np.ndarray:
        while name in alias:
            name = alias[name]
        return numpy_helper.to_array(inits[name])

    removed = []
    count = 0
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization":
            continue
        prod = producers.get(bn.input[0])
        if prod is None or prod.op_type not in PRODUCERS:
            continue
        if uses.get(bn.input[0], 0) != 1 or bn.input[0] in graph_outputs:
            continue
        gamma, beta, mean, var = (const(n) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        this_bug = bug if count == target else None
        count += 1
        new_w, new_b, extra = _fold(prod, const, gamma, beta, mean, var, eps, this_bug, channel)
        dtype = const(prod.input[1]).dtype
        w_name = f"{prod.name or prod.output[0]}_folded_W"
        b_name = f"{prod.name or prod.output[0]}_folded_B"
        graph.initializer.extend(
            [
                numpy_helper.from_array(new_w.astype(dtype), w_name),
                numpy_helper.from_array(new_b.astype(dtype), b_name),
            ]
        )
        del prod.input[1:]
        prod.input.extend([w_name, b_name])
        for attr in prod.attribute:
            if attr.name == "beta" and prod.op_type == "Gemm":
                attr.f = extra
        prod.output[0] = bn.output[0]
        removed.append(bn)
    for bn in removed:
        graph.node.remove(bn)
    _drop_unused(graph)
    return model


def _fold(prod, const, gamma, beta, mean, var, eps, bug, channel):
    eps_used = 0.0 if bug == "eps_ignored" else eps
    s, t = foldmath.bn_scale_shift(gamma, beta, mean, var, eps_used)
    if bug == "mean_sign":
        t = beta.astype(np.float64) + mean * s
    if bug == "beta_dropped":
        t = -mean.astype(np.float64) * s
    w = const(prod.input[1]).astype(np.float64)
    bias = const(prod.input[2]).astype(np.float64) if len(prod.input) > 2 else None
    w_scale = s * s if bug == "scale_twice" else s
    gemm_beta = 1.0
    if prod.op_type == "Conv":
        new_w = foldmath.scale_output_channels(w, w_scale, axis=0)
        out_axis = 0
    elif prod.op_type == "ConvTranspose":
        group = next((a.i for a in prod.attribute if a.name == "group"), 1)
        new_w = _scale_conv_transpose(w, w_scale, group, bug)
        out_axis = 1
    else:  # Gemm: Y = α·A·B' + β·C; fold columns of B' (axis 1, or 0 when transB)
        attrs = {a.name: a for a in prod.attribute}
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        c_beta = attrs["beta"].f if "beta" in attrs else 1.0
        out_axis = 0 if trans_b else 1
        new_w = foldmath.scale_output_channels(w, w_scale, axis=out_axis)
        if bias is not None:
            bias = np.broadcast_to(bias * c_beta, s.shape)
        gemm_beta = c_beta if bug == "gemm_beta_kept" else 1.0
    if bug == "bias_dropped":
        bias = None
    new_b = foldmath.fold_output_bias(bias, s, t)
    if bug == "channel_off":
        new_w = new_w.copy()
        index = [slice(None)] * new_w.ndim
        if prod.op_type == "ConvTranspose":
            group = next((a.i for a in prod.attribute if a.name == "group"), 1)
            per = new_w.shape[1]
            rows = new_w.shape[0] // group
            gi, j = divmod(channel, per)
            index[0] = slice(gi * rows, (gi + 1) * rows)
            index[1] = j
        else:
            index[out_axis] = channel
        new_w[tuple(index)] *= 1.0 + 1e-3
    return new_w, new_b, gemm_beta


def _scale_conv_transpose(w: np.ndarray, s: np.ndarray, group: int, bug: str | None) -> np.ndarray:
    per = w.shape[1]  # C_out / g
    if bug == "ct_first_group":
        return w * foldmath.broadcast_along(s[:per], w.ndim, 1)
    if bug == "ct_interleaved":  # reads s as if o = j·g + gi
        s = s.reshape(per, group).T.reshape(-1)
    return foldmath.scale_conv_transpose_output(w, s, group)


def count_bn(model: onnx.ModelProto) -> int:
    """Number of BatchNormalization nodes in the main graph."""
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def _drop_unused(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        for node in list(graph.node):
            if node.op_type == "Identity" and node.output[0] not in used:
                graph.node.remove(node)
                changed = True
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
