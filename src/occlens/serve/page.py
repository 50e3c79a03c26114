"""The viewer's page and its assets, shipped in the package (nothing from a CDN): the page with its
configuration (the colour map, whether a run is shown) and version filled in."""

from __future__ import annotations

import json
from importlib import resources

from .. import __version__
from .viewer import Viewer

ASSETS = ("serve.js", "serve.css")  # what /static/NAME serves; nothing else in the folder
ASSET_FOLDER = resources.files(__package__) / "static"


def page_config(viewer: Viewer) -> dict:
    """What the page's script is told: the δL colour table (the figures' and the report's, one table:
    :func:`occlens.present.colours.colour_table`) and whether a run is shown."""
    from ..present.colours import colour_table

    return {"colormap": ["#{:02x}{:02x}{:02x}".format(*row) for row in colour_table().tolist()],
            "run": viewer.run is not None}  # fmt: skip


def page_html(viewer: Viewer) -> str:
    """The page, its configuration inlined (safe inside a script element)."""
    page = (ASSET_FOLDER / "index.html").read_text(encoding="utf-8")
    config = json.dumps(page_config(viewer)).replace("<", "\\u003c")
    return page.replace("{{CONFIG}}", config).replace("{{VERSION}}", __version__)


def asset(name: str) -> tuple[bytes, str] | None:
    """The asset ``name`` (one of ASSETS) and its media type, or None."""
    if name not in ASSETS:
        return None
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return (ASSET_FOLDER / name).read_bytes(), f"{kind}; charset=utf-8"
