"""Property tests: choose the hypothesis profile from ``--slow`` / HYPOTHESIS_PROFILE."""

from __future__ import annotations

import pytest
from support import prop_profiles


def pytest_configure(config: pytest.Config) -> None:
    slow = bool(config.getoption("--slow", default=False))
    prop_profiles.select(slow)
