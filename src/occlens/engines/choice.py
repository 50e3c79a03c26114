"""Which exact engine runs an explanation: dense, incremental, or auto (the cost model decides).

``engine="dense"`` is :mod:`occlens.engines.dense` as it is. ``"incremental"`` runs
:mod:`occlens.engines.incremental` and falls back to dense, with a warning, for models it cannot
run (not a torch module, not traceable by ``torch.fx``, traced graph disagreeing with the
model). ``"auto"`` runs incremental only where :mod:`occlens.engines.costmodel` predicts a win and
falls back silently. The engine actually used is what :attr:`Engine.name` says and what
the result records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.checks import check_engine
from ..core.errors import ConfigError, OcclensError, first_line, warn
from ..core.grid import Grid
from ..core.targets import Score
from ..models.forward import Forward
from . import costmodel, drilldown, incremental
from .dense import Dense, Progress
from .protocol import OcclusionEngine


@dataclass(frozen=True, eq=False)
class Engine:
    """The exact engine chosen for one explanation: its name, batch size, why, and (incremental) its plan."""

    name: str  # "dense" or "incremental"
    batch_size: int
    reason: str
    plan: incremental.Plan | None = None
    cost: costmodel.Cost | None = None
    dense_batch_size: int = 1  # for falling back to the dense engine

    def exact(self, forward: Forward, grid: Grid) -> OcclusionEngine:
        """The engine that runs: :class:`~occlens.engines.incremental.Incremental` where a plan was made, else
        :class:`~occlens.engines.dense.Dense` on ``forward``."""
        if self.plan is not None:
            return incremental.Incremental(self.plan, self.batch_size)
        return Dense(forward, grid, self.batch_size)

    def run(
        self,
        forward: Forward,
        image: torch.Tensor,
        fill_image: torch.Tensor,
        grid: Grid,
        score: Score,
        clean: Sequence[float],
        fast: bool = False,
        progress: Progress | None = None,
        deadline: float | None = None,
    ) -> tuple[np.ndarray, int, str, dict]:
        """All windows' scores, exactly, or (``fast``) by drill-down, or (``deadline``, a
        ``time.perf_counter()`` time) the anytime map reached by then; with the batch size, the name of
        what ran (``"dense"``, ``"incremental"``, ``"drilldown+dense"``, ``"anytime+incremental"``...)
        and notes for the result.

        Should the incremental engine fail on an op it let through, the dense engine runs instead
        (with a warning): a correct result always.
        """
        args = (forward, image, fill_image, grid, score, clean, fast, progress, deadline)
        if self.plan is None:
            return self._run(*args)
        try:
            return self._run(*args)
        except (OcclensError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # an op the plan let through failed on regions: the dense engine is always right
            message = f"{type(err).__name__}: {first_line(err)}"
            warn(f"the incremental engine failed ({message}); using the dense engine")
            return Engine("dense", self.dense_batch_size, f"incremental failed: {message}")._run(*args)

    def _run(self, forward, image, fill_image, grid, score, clean, fast, progress, deadline):
        engine: OcclusionEngine = self.exact(forward, grid)
        if fast or deadline is not None:
            engine = drilldown.Approximate(engine, grid, clean, deadline)
        out, size = engine.occluded_scores(image, fill_image, score, progress)
        return out, size, engine.name, dict(getattr(engine, "notes", {}))


def select(
    engine: str,
    model,
    image: torch.Tensor,
    grid: Grid,
    scores: torch.Tensor,
    batch_size: int,
    fixed_batch: bool,
    precision: str = "fp32",
    compile: bool = False,
    first: np.ndarray | None = None,
) -> Engine:
    """The engine to run: ``engine`` as asked when it can, else dense (said with a warning when asked explicitly).

    ``image``: C x H x W on the model's device; ``scores``: the model's 1 x classes scores on
    it; ``batch_size``: the dense engine's; ``fixed_batch``: the user set it (used by both);
    ``first``: the windows an approximate mode scores first (None: all), which the incremental plan is
    made (and costed) for.
    """
    check_engine(engine, "engine")
    if engine == "dense":
        return Engine("dense", batch_size, "asked for")
    if precision != "fp32" or compile:
        if engine == "incremental":
            raise ConfigError(
                f"engine='incremental' runs the model's own float precision without torch.compile; "
                f"got precision={precision!r}, compile={compile}: use engine='dense' or 'auto' for those"
            )
        return Engine("dense", batch_size, "precision or compile asked for: dense")
    kind = "cuda" if image.device.type == "cuda" else "cpu"
    try:
        if not isinstance(model, torch.nn.Module):
            raise incremental.Unsupported(f"the model is a {type(model).__name__}, not a torch module")
        if not isinstance(scores, torch.Tensor):  # a detector's list of boxes: nothing a window changes locally
            raise incremental.Unsupported("the model returns detections, not a tensor of scores")
        if engine == "auto":  # decide before planning where it can: planning costs more than a small run
            if costmodel.dense_macs(model, image) * grid.size < costmodel.MIN_WORK[kind]:
                return Engine("dense", batch_size, f"too little work on {kind} to pay for planning: dense")
            layout = incremental.kept(model, image, grid, windows=first)
            if layout is not None:  # planned before (an earlier image): the decision needs no clean pass
                decided = _decide(layout, kind, batch_size, fixed_batch)
                if decided[0] < costmodel.MIN_SPEEDUP:
                    return _dense(batch_size, *decided)
        plan = incremental.build(model, image, grid, scores, windows=first)
    except incremental.Unsupported as err:
        if engine == "incremental":
            warn(f"engine='incremental' is not possible: {err}; using the dense engine")
        return Engine("dense", batch_size, str(err))
    predicted, size, cost = _decide(plan, kind, batch_size, fixed_batch)
    small = cost.dense_macs * grid.size < costmodel.MIN_WORK[kind]  # where the FLOP counter could not count
    if engine == "auto" and (predicted < costmodel.MIN_SPEEDUP or small):
        return _dense(batch_size, predicted, size, cost)
    return Engine("incremental", size, f"cost model predicts {predicted:.2f}x", plan, cost, batch_size)


def _decide(plan: incremental.Plan, kind: str, batch_size: int, fixed_batch: bool):
    """The cost model's predicted speedup of ``plan`` over the dense engine, its batch size and its cost."""
    cost = costmodel.cost(plan)
    size = batch_size if fixed_batch else incremental.batch_size(plan, plan.grid.size)
    return cost.predicted_speedup(kind, incremental.mean_batch(plan, size), batch_size), size, cost


def _dense(batch_size: int, predicted: float, size: int, cost) -> Engine:
    return Engine("dense", batch_size, f"cost model predicts {predicted:.2f}x: dense", cost=cost)
