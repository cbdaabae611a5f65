"""Property: the blocked, fast-checked weight scaling equals the plain float64 reference.

``scale_output_channels_cast`` checks each cast block cheaply and only then falls back to
``cast_back``; whatever the weights (pruned zeros, subnormals, huge values, NaN) and
scales (zero, tiny, huge), it must give the reference's array or the reference's refusal.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from support.prop_profiles import profile

from bnfold import foldmath

DTYPES = (np.float16, np.float32, np.float64)
SPECIAL = (0.0, 1e-45, 1e-8, 6e4, 3e38, np.inf, np.nan)


@st.composite
def weights_and_scales(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, type, int]:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(1, 9), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, draw(st.sampled_from((1e-3, 1.0, 1e3))), shape)
    s = rng.normal(0.0, draw(st.sampled_from((1e-6, 1.0, 1e5))), shape[0])
    for arr in (w.reshape(-1), s):
        for _ in range(draw(st.integers(0, 3))):
            arr[rng.integers(arr.size)] = draw(st.sampled_from(SPECIAL))
    block_bytes = draw(st.sampled_from((8, 64, 1 << 20)))
    with np.errstate(over="ignore", invalid="ignore"):
        return w.astype(dtype), s, dtype, block_bytes


@profile(share=0.6)
@given(case=weights_and_scales())
def test_blocked_scaling_equals_the_float64_reference(
    case: tuple[np.ndarray, np.ndarray, type, int],
) -> None:
    w, s, dtype, block_bytes = case
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        expected, expected_reason = foldmath.cast_back(
            foldmath.scale_output_channels(w, s, 0), dtype, w
        )
        got, reason = foldmath.scale_output_channels_cast(w, s, dtype, block_bytes)
    assert (reason is None) == (expected_reason is None), (reason, expected_reason)
    if expected is not None:
        assert got is not None
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()
