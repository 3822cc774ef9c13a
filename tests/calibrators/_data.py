"""What the calibrator tests feed: hypothesis strategies for calibration batches and seeded heavy-tailed samples."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FAST = settings(max_examples=15, deadline=None)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)
# Merge exactness must hold down to the smallest float32 values too.
finite_or_tiny = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def batches(min_dims: int = 1, max_dims: int = 3, count: int = 3):
    """A list of float32 arrays sharing all but the first dimension (calibration batches)."""
    shape = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=6)
    return shape.flatmap(
        lambda s: st.lists(
            hnp.arrays(np.float32, st.integers(1, 5).map(lambda n: (n, *s[1:])), elements=finite),
            min_size=1,
            max_size=count,
        )
    )


def heavy_tailed(kind: str, n: int = 200_000, seed: int = 0) -> torch.Tensor:
    """Seeded heavy-tailed samples: "student-t" (3 degrees of freedom), "laplace", or
    "laplace-outliers" (0.1 % of the values scaled by 8, like outlier features in transformers)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "student-t":
        z = torch.randn(n, generator=g)
        chi2 = torch.randn(n, 3, generator=g).square().sum(1)
        return z / torch.sqrt(chi2 / 3)
    u = torch.rand(n, generator=g) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    if kind == "laplace-outliers":
        x[torch.randperm(n, generator=g)[: n // 1000]] *= 8.0
    return x
