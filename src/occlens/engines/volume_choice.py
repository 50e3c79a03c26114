"""Which exact engine runs a volume: dense, incremental, or auto (the cost model decides), as
:mod:`occlens.engines.choice` does for 2-D images.

``engine="incremental"`` runs :mod:`occlens.engines.incremental_volume` on a volume's windows and falls back to the
dense path (:mod:`occlens.engines.volume`), with one warning, where the model cannot run incrementally (not a torch
module, not traceable by ``torch.fx``, a traced graph disagreeing with the model); band occlusion always runs dense
(a band is the whole image: nothing to save). ``"auto"`` runs incremental only where the cost model predicts it
pays (:func:`~occlens.engines.incremental_volume.worth_it`) and falls back silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ConfigError, OcclensError, first_line, warn
from ..core.grid import BandGrid, BandWindowGrid, Grid, VolumeGrid
from ..core.progress import Progress
from ..core.targets import Score
from ..graph.tracing import Unsupported
from ..models.forward import Forward
from . import costmodel
from .incremental_volume import VolumePlan, plan_volume, volume_batch, volume_cost, volume_scores, worth_it
from .volume import VolumeDense


def volume_plan(
    engine: str,
    model,
    x: torch.Tensor,
    grid: Grid | VolumeGrid | BandGrid | BandWindowGrid,
    scores,
    precision: str = "fp32",
    compile: bool = False,
) -> VolumePlan | None:
    """The incremental plan to run, or None for the dense path: ``engine`` as asked where it can.

    ``x``: the C x D x H x W volume on the model's device and dtype; ``scores``: the model's output on it.
    """
    if engine == "dense":
        return None
    if not isinstance(grid, VolumeGrid):
        if engine == "incremental":
            warn("the incremental engine recomputes a volume's windows; band occlusion ran on the dense engine")
        return None
    if precision != "fp32" or compile:
        if engine == "incremental":
            raise ConfigError(
                f"engine='incremental' runs the model's own float precision without torch.compile; got "
                f"precision={precision!r}, compile={compile}: use engine='dense' or 'auto' for those"
            )
        return None
    kind = "cuda" if x.device.type == "cuda" else "cpu"
    try:
        if not isinstance(model, torch.nn.Module):
            raise Unsupported(f"the model is a {type(model).__name__}, not a torch module")
        if not isinstance(scores, torch.Tensor):
            raise Unsupported("the model returns no tensor of scores")
        if engine == "auto" and costmodel.dense_macs(model, x) * grid.size < costmodel.MIN_WORK[kind]:
            return None  # too little work to pay for planning
        plan = plan_volume(model, x, grid, scores)
    except Unsupported as err:
        if engine == "incremental":
            warn(f"engine='incremental' is not possible: {err}; using the dense engine")
        return None
    if engine == "auto" and not worth_it(volume_cost(plan), x.device):
        return None
    return plan


@dataclass
class VolumeIncremental:
    """The incremental engine on a volume's windows as an :class:`~occlens.engines.protocol.OcclusionEngine` (what
    :class:`~occlens.engines.drilldown.Approximate` runs on the windows it chooses). Should it fail on an op its
    plan let through, the dense path runs instead, with a warning: a correct result always."""

    plan: VolumePlan
    dense: VolumeDense  # the fallback
    batch_size: int
    name: str = "incremental"

    def occluded_scores(
        self,
        image: torch.Tensor,
        fill_image: torch.Tensor,
        score: Score,
        progress: Progress | None = None,
        windows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """T x len(windows) scores (all windows, or the raster ``windows``) and the batch size used."""
        if self.name == "incremental":
            try:
                return volume_scores(self.plan, image, fill_image, score, self.batch_size, progress, windows)
            except (OcclensError, torch.cuda.OutOfMemoryError):
                raise
            except Exception as err:  # an op the plan let through failed on regions: the dense engine is always right
                warn(f"the incremental engine failed ({type(err).__name__}: {first_line(err)}); using the dense engine")
                self.name = "dense"
        return self.dense.occluded_scores(image, fill_image, score, progress, windows)


def volume_engine(
    plan: VolumePlan | None,
    forward: Forward,
    grid: Grid | VolumeGrid | BandGrid | BandWindowGrid,
    batch_size: int,
    fixed_batch: bool,
) -> VolumeIncremental | VolumeDense:
    """The exact engine of a volume's windows: ``plan``'s incremental engine (its own batch size unless
    ``fixed_batch``), or the dense path where there is no plan."""
    dense = VolumeDense(forward, grid, batch_size)
    if plan is None:
        return dense
    return VolumeIncremental(plan, dense, batch_size if fixed_batch else volume_batch(plan, grid.size))
