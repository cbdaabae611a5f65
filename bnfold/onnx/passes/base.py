"""BnfoldPass: an onnx-ir in-place pass that shares a FoldContext with the pipeline."""

from __future__ import annotations

import abc

import onnx_ir as ir

from bnfold.onnx.context import FoldContext


class BnfoldPass(ir.passes.InPlacePass, abc.ABC):
    """Base class: subclasses implement ``run()`` and return whether they changed anything."""

    def __init__(self, ctx: FoldContext) -> None:
        super().__init__()
        self.ctx = ctx

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=self.run())

    @abc.abstractmethod
    def run(self) -> bool:
        """Apply the pass to ``self.ctx.model``; True when the model changed."""
