"""The dense engine's path for volumes and band occlusion: batches of occluded copies built on the model's device.

A batch is one buffer of ``batch x C x D x H x W`` (``batch`` copies of the input), allocated once and refilled
from the input for each batch, then each copy gets the fill in its window's box (:func:`occlens.core.occlude.
occluded_batch`) or in its band group's channels (:func:`~occlens.core.occlude.band_batch`; only inside a 2-D
window for band windows, :func:`~occlens.core.occlude.band_window_batch`): memory is the batch and the input and
fill once, whatever the number of windows; no mask per window. The batch size comes from the
engines' one rule (:func:`occlens.engines.memory.fitting`) after :func:`~occlens.core.occlude.check_fits` has
refused an input of which even one copy and its forward pass does not fit; on CUDA out-of-memory it is halved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ModelError
from ..core.grid import BandGrid, BandWindowGrid, Grid, VolumeGrid
from ..core.occlude import band_batch, band_window_batch, check_fits, occluded_batch
from ..core.progress import Progress
from ..core.scoring import model_output
from ..core.targets import Score
from ..models.forward import Forward, call_model
from .memory import MAX_AUTO_BATCH, available_memory, fitting, in_batches

PER_COPY = 64  # bytes of a forward pass per input byte, assumed where not measured (the engines' assumption)
# On a CPU, volumes take bigger batches than 2-D images (memory.CPU_AUTO_BATCH = 4): one copy's activations are
# large already, and fewer, larger calls pay. A small 3-D CNN on 64³, 64 windows, 2 cores: 12.5-14.5 s at batch 4,
# 8.4-9.5 s at 16, 8.3 s at 32 (benchmarks/volume_speed.py's model)
CPU_VOLUME_BATCH = 16


def per_copy_bytes(x: torch.Tensor, measured: int | None = None) -> int:
    """What one more occluded copy costs: its forward pass's peak (``measured`` on CUDA), else :data:`PER_COPY`
    times the copy's bytes; at least the copy itself."""
    size = x.numel() * x.element_size()
    return max(measured or PER_COPY * size, size)


def volume_batch_size(windows: int, x: torch.Tensor, device: torch.device, measured: int | None = None,
                      given: int | None = None) -> int:  # fmt: skip
    """The batch of occluded copies: ``given``, else as many as fit a quarter of the free memory (capped as the
    dense engine caps it). Refused in one line either way: with a ``measured`` forward pass (CUDA), an input of
    which one copy and its pass do not fit that quarter; unmeasured (a CPU), an input whose copy, buffer and fill
    do not fit the free memory at all (the 64x assumption sizes batches, but refuses nothing it has not seen)."""
    if measured is not None:
        check_fits(per_copy_bytes(x, measured), available_memory(device))
    else:
        check_fits(3 * x.numel() * x.element_size(), available_memory(device), 1.0, "with the input and its fill")
    if given is not None:
        return given
    return fitting(windows, per_copy_bytes(x, measured), device,
                   MAX_AUTO_BATCH if device.type == "cuda" else CPU_VOLUME_BATCH)  # fmt: skip


def occluded_scores(
    forward: Forward,
    x: torch.Tensor,
    fill: torch.Tensor,
    grid: Grid | VolumeGrid | BandGrid | BandWindowGrid,
    score: Score,
    batch_size: int,
    progress: Progress | None = None,
    windows: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``score`` (T per copy) of every window's occluded copy of ``x`` (C x D x H x W, or C x H x W with a
    :class:`BandGrid` or :class:`BandWindowGrid`), or of the raster ``windows`` alone (the drill-down's), on ``x``'s
    device and dtype: T x windows float64, and the batch size used."""
    chosen = np.arange(grid.size) if windows is None else np.asarray(windows, dtype=np.int64).reshape(-1)
    n = len(chosen)
    out: np.ndarray | None = None
    buffer: list[torch.Tensor] = []  # allocated at the first batch, reused; a smaller one after a halving

    def step(start: int, stop: int) -> None:
        nonlocal out
        count = stop - start
        if not buffer or buffer[0].shape[0] < count or buffer[0].shape[0] > 2 * count:
            buffer[:] = [torch.empty((count, *x.shape), dtype=x.dtype, device=x.device)]
        indices = chosen[start:stop]
        if isinstance(grid, BandGrid):
            batch = band_batch(x, fill, grid, indices, out=buffer[0])
        elif isinstance(grid, BandWindowGrid):
            batch = band_window_batch(x, fill, grid, indices, out=buffer[0])
        else:
            batch = occluded_batch(x, fill, grid, indices, out=buffer[0])
        which = f"windows {indices[0]}..{indices[-1]}"
        raw = call_model(forward, batch, which)
        try:
            got = np.asarray(score(model_output(raw, count), count), dtype=np.float64).reshape(count, -1).T
        except ModelError as err:
            raise ModelError(f"on the occluded copies of {which}: {err}") from None
        if out is None:
            out = np.empty((got.shape[0], n), dtype=np.float64)
        out[:, start:stop] = got
        if progress is not None:
            progress(stop, n)

    size = in_batches(n, batch_size, x.device, "occluded copy", step)
    return (np.empty((0, n)) if out is None else out), size


@dataclass(frozen=True)
class VolumeDense:
    """:func:`occluded_scores` as an :class:`~occlens.engines.protocol.OcclusionEngine`, the exact engine the
    drill-down (:class:`~occlens.engines.drilldown.Approximate`) runs on the windows it chooses of a volume."""

    forward: Forward
    grid: Grid | VolumeGrid | BandGrid | BandWindowGrid  # a volume's windows, a band image's 2-D ones, its bands or
    # its band windows
    batch_size: int
    name: str = "dense"

    def occluded_scores(
        self,
        image: torch.Tensor,
        fill_image: torch.Tensor,
        score: Score,
        progress: Progress | None = None,
        windows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """T x len(windows) scores (all windows, or the raster ``windows``) and the batch size used."""
        return occluded_scores(self.forward, image, fill_image, self.grid, score, self.batch_size, progress, windows)
