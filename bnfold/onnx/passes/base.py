"""BnfoldPass: an onnx-ir in-place pass that shares a FoldContext with the pipeline."""

from __future__ import annotations

import abc

import onnx_ir as ir

from bnfold.onnx.context import FoldContext


class BnfoldPass(ir.passes.InPlacePass, abc.ABC):
    """Base class: subclasses implement ``run(model)`` and return whether they changed it.

    The FoldContext carries what passes share for one model (options, the report, names in
    use), so a pass acts on the model it is given, which must be the context's model.
    """

    def __init__(self, ctx: FoldContext) -> None:
        super().__init__()
        self.ctx = ctx

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model is not self.ctx.model:
            raise ValueError(f"{type(self).__name__} was built for another model's FoldContext")
        return ir.passes.PassResult(model, modified=self.run(model))

    @abc.abstractmethod
    def run(self, model: ir.Model) -> bool:
        """Apply the pass to ``model``; True when it changed."""
