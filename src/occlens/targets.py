"""``occlens.targets``: what a map explains (``from occlens.targets import box, segment, margin, regression``).

The targets live in :mod:`occlens.core.targets` (the core layer, below the engines that score them); this
module is their public home, the same objects under a short name. A target reduces the model's output for N
images to N x T scores ``s`` (higher = more of the thing explained), ``δL_i = s(x_occl_i) - s(x)``: a negative
δL always means "the region supported it". See ``docs/targets.md``.
"""

from __future__ import annotations

from .core.targets import (
    EPSILON,
    Bound,
    BoxTarget,
    Class,
    Clean,
    Function,
    Margin,
    Predicted,
    Regression,
    Segment,
    Target,
    as_target,
    box,
    iou,
    margin,
    parse_target,
    register,
    regression,
    segment,
)

__all__ = [
    "EPSILON",
    "Bound",
    "BoxTarget",
    "Class",
    "Clean",
    "Function",
    "Margin",
    "Predicted",
    "Regression",
    "Segment",
    "Target",
    "as_target",
    "box",
    "iou",
    "margin",
    "parse_target",
    "register",
    "regression",
    "segment",
]
