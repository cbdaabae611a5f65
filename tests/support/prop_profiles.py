"""Hypothesis profiles of the property tests: ``ci`` (default) and ``nightly`` (``--slow``).

Profiles are applied per test (``@profile(share)``) rather than loaded globally, so other
test folders keep their own hypothesis settings. ``HYPOTHESIS_PROFILE=ci|nightly``
overrides the choice; ``share`` is a test's fraction of the profile's example budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

BUDGET = {"ci": 320, "nightly": 5000}  # examples over all property tests together
_active = {"name": "ci"}

for _name in BUDGET:
    settings.register_profile(
        f"bnfold-{_name}",
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def select(slow: bool) -> str:
    """Pick the profile: HYPOTHESIS_PROFILE if it names one of ours, else by ``--slow``."""
    env = os.environ.get("HYPOTHESIS_PROFILE", "")
    _active["name"] = env if env in BUDGET else ("nightly" if slow else "ci")
    return _active["name"]


def profile(share: float) -> Callable[[Any], Any]:
    """Settings for one test: ``share`` of the active budget, deadline off."""
    name = _active["name"]
    return settings(
        settings.get_profile(f"bnfold-{name}"), max_examples=max(1, round(BUDGET[name] * share))
    )
