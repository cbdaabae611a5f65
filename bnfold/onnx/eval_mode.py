"""Switching training-mode BatchNorm/Dropout nodes to inference semantics (``--assume-eval``).

A model exported in training mode normalises with batch statistics and drops activations
at random. Under ``assume_eval`` the user asks for inference semantics instead: BN uses its
running statistics, Dropout is the identity. ``inference_reference`` builds that reading of
the *original* model (nothing folded), the honest reference to verify a folded result against.
"""

from __future__ import annotations

import os

import onnx
import onnx_ir as ir

from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.walk import all_nodes, model_opset


def bn_in_training(node: ir.Node, default_opset: int) -> bool:
    """True when a BatchNormalization node normalises with batch statistics."""
    opset = node.version or default_opset
    if opset < 7:
        return node.attributes.get_int("is_test", 0) == 0
    return node.attributes.get_int("training_mode", 0) != 0


def set_bn_inference(node: ir.Node, default_opset: int) -> bool:
    """Make a training-mode BN use running statistics; False when its extra outputs are used."""
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return False
    if (node.version or default_opset) < 7:
        node.attributes["is_test"] = ir.AttrInt64("is_test", 1)
    else:
        node.attributes.pop("training_mode", None)
    if len(node.outputs) > 1:
        node.resize_outputs(1)
    return True


def set_dropout_inference(node: ir.Node, default_opset: int) -> bool:
    """Make a Dropout the identity at inference; True when it could be in training mode."""
    if (node.version or default_opset) < 7:
        was_training = node.attributes.get_int("is_test", 0) == 0
        node.attributes["is_test"] = ir.AttrInt64("is_test", 1)
        return was_training
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        node.resize_inputs(2)
        return True
    return False


def to_inference(model: ir.Model) -> int:
    """Switch every training-mode BN and Dropout in ``model`` (all graphs); return how many."""
    opset = model_opset(model)
    changed = 0
    for node in all_nodes(model):
        if is_onnx_op(node, "BatchNormalization") and bn_in_training(node, opset):
            changed += set_bn_inference(node, opset)
        elif is_onnx_op(node, "Dropout"):
            changed += set_dropout_inference(node, opset)
    return changed


def inference_reference(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """The original model read with inference semantics (training-mode nodes switched)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    ir_model = ir.serde.deserialize_model(proto)
    to_inference(ir_model)
    return ir.serde.serialize_model(ir_model)
