"""Keep-lists: BatchNorm / Dropout nodes the user asked bnfold to leave alone.

One framework-neutral rule shared by every front end (ONNX graphs, nn.Modules through fx,
and later torch.export programs): a node is kept when ``keep_dropout`` is set and it is a
Dropout, or when its name matches one of the ``--keep`` globs (``fnmatch``, case-sensitive).
A front end asks ``KeepList.keeps(names, is_dropout=...)`` where it picks BN/Dropout
candidates and records the node with status ``"kept"`` and reason :data:`KEPT_REASON`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

KEPT_REASON = "kept by request"


@dataclasses.dataclass(frozen=True)
class KeepList:
    """Glob patterns on node names, plus a switch that keeps every Dropout."""

    patterns: tuple[str, ...] = ()
    dropout: bool = False

    @classmethod
    def of(cls, keep: Iterable[str] | str | None = None, keep_dropout: bool = False) -> KeepList:
        """Build from the API's ``keep=[...]`` (a single string is one pattern)."""
        if keep is None:
            patterns: tuple[str, ...] = ()
        elif isinstance(keep, str):
            patterns = (keep,)
        else:
            patterns = tuple(keep)
        bad = [p for p in patterns if not isinstance(p, str) or not p]
        if bad:
            from bnfold.errors import InputError

            raise InputError(f"keep patterns must be non-empty strings, got {bad!r}")
        return cls(patterns, bool(keep_dropout))

    def __bool__(self) -> bool:
        return bool(self.patterns) or self.dropout

    def keeps(self, names: Iterable[str], *, is_dropout: bool) -> bool:
        """True when the node (known by any of ``names``) must stay as it is."""
        if is_dropout and self.dropout:
            return True
        return any(self.matching(name) for name in names if name)

    def matching(self, name: str) -> list[str]:
        """The patterns that match ``name``."""
        return [p for p in self.patterns if fnmatch.fnmatchcase(name, p)]

    def unused(self, names: Iterable[str]) -> list[str]:
        """Patterns that match none of ``names`` (worth a warning: probably a typo)."""
        used: set[str] = set()
        for name in names:
            used.update(self.matching(name))
        return [p for p in self.patterns if p not in used]


def unused_warning(patterns: list[str]) -> str:
    """The report warning for keep patterns that matched no BatchNorm or Dropout."""
    listed = ", ".join(repr(p) for p in patterns)
    return f"keep pattern {listed} matched no BatchNorm or Dropout"
