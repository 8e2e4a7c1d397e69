"""Type aliases shared across turnout."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
CacheTier = Literal["skip", "exact", "semantic"]
CACHE_TIERS: tuple[CacheTier, ...] = ("skip", "exact", "semantic")
# Which embedding function a bundle's heads and thresholds were fitted on (router.encoder): manifests
# written before the field existed were fitted on float32 padded batches; bump the int8 name whenever
# router.encoder_graph's calibration or outlier rule changes what an embedding is.
EmbeddingKind = Literal["float32_batched", "int8_single_v1"]
LEGACY_EMBEDDING: EmbeddingKind = "float32_batched"
CURRENT_EMBEDDING: EmbeddingKind = "int8_single_v1"
