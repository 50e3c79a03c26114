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
    """What the page's script is told: the δL colour map (RdBu, 256 steps) and whether a run is shown."""
    import matplotlib

    rdbu = matplotlib.colormaps["RdBu"]
    return {
        "colormap": ["#{:02x}{:02x}{:02x}".format(*(round(255 * v) for v in rdbu(i / 255)[:3])) for i in range(256)],
        "run": viewer.run is not None,
    }


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
