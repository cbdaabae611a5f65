"""PyTorch front end: fold BatchNorm into Conv/ConvTranspose/Linear and strip Dropout in modules.

    from bnfold.torch import fold_module
    result = fold_module(model, example_inputs=(x,))
    result.model, result.report, result.max_error

Extend the set of BatchNorm / Dropout modules with :func:`register_batchnorm` and
:func:`register_dropout`.
"""

from __future__ import annotations

from bnfold.torch.api import TorchFoldResult, fold_module
from bnfold.torch.dropout import register_dropout
from bnfold.torch.registry import BNParams, register_batchnorm, unregister_batchnorm
from bnfold.torch.saving import load_folded

__all__ = [
    "BNParams",
    "TorchFoldResult",
    "fold_module",
    "load_folded",
    "register_batchnorm",
    "register_dropout",
    "unregister_batchnorm",
]
