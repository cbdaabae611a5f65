"""How many threads the fold math of one weight may use."""

from __future__ import annotations

MAX_FOLD_WORKERS = 4  # memory-bound: more threads than this only contend for bandwidth


def fold_workers() -> int:
    """This process's CPU thread budget (``-j N`` gives each worker its share), capped."""
    from bnfold.equivalence.threads import thread_budget  # stdlib only; verify owns the budget

    return max(1, min(thread_budget(), MAX_FOLD_WORKERS))
