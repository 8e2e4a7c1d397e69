"""Type aliases shared across turnout."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
CacheTier = Literal["skip", "exact", "semantic"]
CACHE_TIERS: tuple[CacheTier, ...] = ("skip", "exact", "semantic")
