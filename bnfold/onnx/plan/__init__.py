"""Planning folds: check everything first, then return a ``Plan`` that mutates when applied.

``plan.Plan`` is the one plan type. ``conv``, ``conv_transpose``, ``gemm`` and ``matmul``
are the per-layer adapters (``fold_output``: ``s·L(x) + t``; ``fold_input``: ``L(s·x + t)``),
reached through ``layers``. ``producers`` and ``consumers`` walk from a BN to the layers
that can absorb it, through ``layout`` and ``pooling`` ops, Concats and Adds.
"""
