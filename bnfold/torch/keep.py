"""Keep-lists on nn.Modules: flag the BN/Dropout modules the user asked to keep.

``mark_kept`` sets a flag on matching modules (qualified names from ``named_modules``) of
the working copy; the places that decide folding ask ``is_kept``: ``registry.match_batchnorm``
answers "cannot fold: kept by request" and ``dropout.removal_reason`` "must stay", so every
folder (fx call sites, adjacency) leaves them alone. ``finish_kept`` turns those entries
into status ``kept`` and removes the flags. A torch.export front end can reuse the three.
"""

from __future__ import annotations

from torch import nn

from bnfold.keep import KEPT_REASON, KeepList, unused_warning
from bnfold.report import FoldReport

KEPT_ATTR = "_bnfold_kept"


def is_kept(module: nn.Module) -> bool:
    """True for a module ``mark_kept`` flagged."""
    return bool(module.__dict__.get(KEPT_ATTR, False))


def mark_kept(model: nn.Module, keep: KeepList) -> None:
    """Flag every BN-like / dropout-like module of ``model`` that ``keep`` names."""
    if not keep:
        return
    from bnfold.torch.dropout import is_dropout_like
    from bnfold.torch.registry import is_batchnorm_like

    for path, module in model.named_modules(remove_duplicate=False):
        dropout = is_dropout_like(module)
        if not (dropout or is_batchnorm_like(module)):
            continue
        if keep.keeps([path], is_dropout=dropout):
            module.__dict__[KEPT_ATTR] = True


def finish_kept(model: nn.Module, report: FoldReport, keep: KeepList) -> None:
    """Report kept modules as ``kept``, warn about unused patterns, drop the flags."""
    if not keep:
        return
    for entry in report.entries:
        if entry.status == "left" and entry.reason == KEPT_REASON:
            entry.status = "kept"
    unused = keep.unused(e.name.split("#")[0] for e in report.entries)  # "bn#2": call 2
    if unused:
        report.warn(unused_warning(unused))
    for module in model.modules():
        module.__dict__.pop(KEPT_ATTR, None)
