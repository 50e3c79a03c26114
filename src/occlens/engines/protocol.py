"""The one protocol every engine satisfies: score the occluded copies of an image, window by window.

:class:`~occlens.engines.dense.Dense` runs every occluded copy through the model,
:class:`~occlens.engines.incremental.Incremental` recomputes only what each window changes, and
:class:`~occlens.engines.drilldown.Approximate` runs either on the windows that matter and interpolates the
rest. Each returns ``score`` (a target's, :mod:`occlens.core.targets`) of every occluded copy.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..core.targets import Score
from .dense import Progress


@runtime_checkable
class OcclusionEngine(Protocol):
    name: str  # what the result records: dense, incremental, drilldown+dense, anytime+incremental...
    batch_size: int

    def occluded_scores(
        self,
        image: torch.Tensor,
        fill_image: torch.Tensor,
        score: Score,
        progress: Progress | None = None,
        windows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """T x windows float64 scores of the occluded copies (all windows, or raster ``windows``), and the
        batch size used."""
        ...
