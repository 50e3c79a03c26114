"""The colours of δL maps, one table for every place that draws one: the figures (:mod:`occlens.present.figure`
draws with matplotlib's :data:`CMAP`), the report (its ``static/colours.js`` is :func:`colour_table`, written
by :mod:`occlens.present.report.colours`) and the viewer."""

from __future__ import annotations

import numpy as np

CMAP = "RdBu"  # negative δL (supports the class) red, positive (argues against) blue
LEVELS = 256  # colours in the table, as in matplotlib's colour maps


def colour_table(cmap: str = CMAP) -> np.ndarray:
    """``cmap``'s colours as LEVELS x 3 uint8 RGB, in the order matplotlib maps ``vmin..vmax`` onto them:
    row 0 for the most negative δL (red), the last row for the most positive (blue)."""
    import matplotlib

    rgba = matplotlib.colormaps[cmap](np.arange(LEVELS))
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)
