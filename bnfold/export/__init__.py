"""torch.export front end: fold BatchNorm in ExportedPrograms and ``.pt2`` archives.

Reading (``program``), planning with the shared rules (``plan``), rewriting a copy
(``rewrite``), verification (``verify``), archives (``archive``) and the one-call API
(``api.fold_program``). Importing this package imports torch.
"""

from __future__ import annotations

from bnfold.export.api import ProgramFoldResult, fold_program

__all__ = ["ProgramFoldResult", "fold_program"]
