"""Sample photos shipped with occlens (CC0, see ATTRIBUTION.md), with their true ImageNet labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class Sample:
    """One sample photo: where it is, what it shows, its true ImageNet-1k class and its licence."""

    name: str
    path: Path
    title: str
    label: int
    author: str
    source: str
    license: str


@cache
def samples() -> tuple[Sample, ...]:
    """All sample photos, in the order of samples.json."""
    folder = resources.files(__name__)
    entries = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
    return tuple(
        Sample(
            name=Path(e["file"]).stem,
            path=Path(str(folder / e["file"])),
            title=e["title"],
            label=int(e["label"]),
            author=e["author"],
            source=e["source"],
            license=e["license"],
        )
        for e in entries
    )


def sample(name: str) -> Sample:
    """The sample called ``name`` (e.g. ``"chelsea"``)."""
    for s in samples():
        if s.name == name:
            return s
    raise ConfigError(f"unknown sample {name!r}; choose one of: {', '.join(s.name for s in samples())}")
