"""Which exact engine runs a volume: dense, incremental, or auto (the cost model decides), as
:mod:`occlens.engines.choice` does for 2-D images.

``engine="incremental"`` runs :mod:`occlens.engines.incremental_volume` on a volume's windows and falls back to the
dense path (:mod:`occlens.engines.volume`), with one warning, where the model cannot run incrementally (not a torch
module, not traceable by ``torch.fx``, a traced graph disagreeing with the model); band occlusion always runs dense
(a band is the whole image: nothing to save). ``"auto"`` runs incremental only where the cost model predicts it
pays (:func:`~occlens.engines.incremental_volume.worth_it`) and falls back silently.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ConfigError, OcclensError, first_line, warn
from ..core.grid import BandGrid, Grid, VolumeGrid
from ..core.progress import Progress
from ..core.targets import Score
from ..graph.tracing import Unsupported
from ..models.forward import Forward
from . import costmodel
from .incremental_volume import VolumePlan, plan_volume, volume_batch, volume_cost, volume_scores, worth_it
from .volume import occluded_scores


def volume_plan(
    engine: str,
    model,
    x: torch.Tensor,
    grid: Grid | VolumeGrid | BandGrid,
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


def run_volume(
    plan: VolumePlan | None,
    forward: Forward,
    x: torch.Tensor,
    fill: torch.Tensor,
    grid: Grid | VolumeGrid | BandGrid,
    score: Score,
    batch_size: int,
    fixed_batch: bool,
    progress: Progress | None = None,
) -> tuple[np.ndarray, int, str]:
    """Every window's scores (T x windows), the batch size used and the engine that ran: ``plan``'s incremental
    engine, or the dense path where there is none. Should the incremental engine fail on an op its plan let
    through, the dense path runs instead, with a warning: a correct result always."""
    if plan is not None:
        try:
            size = batch_size if fixed_batch else volume_batch(plan, grid.size)
            return (*volume_scores(plan, x, fill, score, size, progress), "incremental")
        except (OcclensError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # an op the plan let through failed on regions: the dense engine is always right
            warn(f"the incremental engine failed ({type(err).__name__}: {first_line(err)}); using the dense engine")
    return (*occluded_scores(forward, x, fill, grid, score, batch_size, progress), "dense")
