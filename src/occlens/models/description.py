"""A model's *description*: how to feed it and read its output (input size, resize/crop, mean/std, channel
order, output kind, labels, and the number of classes of an architecture), and the files it is read from.

It starts from what the model itself says (torchvision weights metadata, timm's ``pretrained_cfg``, the ONNX
graph's input size, a Hugging Face folder's config and image processor), then takes a JSON/TOML file beside the
model file (``model.onnx`` -> ``model.json`` or ``model.toml``), then ``description=`` (a file or a mapping,
e.g. from CLI flags): :func:`with_description`. Labels files: :func:`read_labels`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.scoring import check_output
from ..core.source import DESCRIPTION_KEYS
from .preprocess import IMAGENET, Preprocess

MAX_CLASSES = 1_000_000  # a classifier head beyond this is a typo, and would try to allocate it


@dataclasses.dataclass(frozen=True)
class Description:
    """How to feed a model and read its output."""

    preprocess: Preprocess = IMAGENET
    output: str = "logits"
    labels: tuple[str, ...] | None = None  # None: ImageNet names for 1000 classes, else the indices
    num_classes: int | None = None  # for torchvision/timm architectures; None keeps the architecture's

    def merged(
        self, changes: Mapping[str, Any], base_dir: Path | None = None, source: str = "description"
    ) -> Description:
        """A copy with ``changes`` (keys of :data:`DESCRIPTION_KEYS`) applied, each validated."""
        unknown = sorted(set(changes) - set(DESCRIPTION_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DESCRIPTION_KEYS)}")
        pre = {}
        if "input_size" in changes:
            size = changes["input_size"]
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_whole(v) for v in size):
                raise ConfigError(f"{source}: input_size must be N or [height, width], positive ints, got {size!r}")
            pre["size"] = tuple(size)
        for key in ("resize", "interpolation", "mean", "std", "channel_order"):
            if key in changes:
                pre[key] = changes[key]
        out = dataclasses.replace(self, preprocess=dataclasses.replace(self.preprocess, **pre)) if pre else self
        if "output" in changes:
            out = dataclasses.replace(out, output=check_output(changes["output"]))
        if "num_classes" in changes:
            n = changes["num_classes"]
            if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CLASSES:
                raise ConfigError(f"{source}: num_classes must be an int from 2 to {MAX_CLASSES:,}, got {n!r}")
            out = dataclasses.replace(out, num_classes=n)
        if "labels" in changes:
            labels = changes["labels"]
            if isinstance(labels, (str, os.PathLike)):
                labels = read_labels(Path(labels) if base_dir is None else base_dir / labels)
            if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(v, str) for v in labels):
                raise ConfigError(f"{source}: labels must be a labels file or a list of class names, got {labels!r}")
            out = dataclasses.replace(out, labels=tuple(labels))
        return out


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents, or a ConfigError that says why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None


def _json(text: str, path: Path):
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: the JSON is nested too deeply to read") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None


def read_description(path: str | Path) -> dict[str, Any]:
    """A description file (JSON, or TOML on Python 3.11+) as a dict."""
    path = Path(path)
    text = _text(path, "model description")
    if path.suffix == ".toml":
        try:
            import tomllib

            data = tomllib.loads(text)
        except ImportError:
            raise ConfigError(f"{path}: TOML descriptions need Python 3.11 or newer; write it as JSON") from None
        except ValueError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    else:
        data = _json(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model description must be an object of keys ({', '.join(DESCRIPTION_KEYS)})")
    return data


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line), a JSON list, or a JSON object {index: name}."""
    path = Path(path)
    text = _text(path, "labels file")
    if path.suffix == ".json":
        data = _json(text, path)
        if isinstance(data, dict):
            try:
                indexed = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise ConfigError(f"{path}: a labels object must map class indices to names") from None
            if sorted(indexed) != list(range(len(indexed))):
                raise ConfigError(f"{path}: label indices must be 0..{len(indexed) - 1} with none missing")
            return tuple(indexed[i] for i in range(len(indexed)))
        if isinstance(data, list):
            return tuple(str(v) for v in data)
        raise ConfigError(f"{path}: labels JSON must be a list of names or an object {{index: name}}")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ConfigError(f"{path}: the labels file is empty")
    return names


def with_description(base: Description, model_path: Path | None, description) -> Description:
    """``base``, then ``MODEL.json``/``MODEL.toml`` beside the model file, then ``description`` (path or mapping)."""
    for suffix in (".json", ".toml"):
        beside = model_path.with_suffix(suffix) if model_path is not None else None
        if beside is not None and beside.is_file() and beside != model_path:
            base = base.merged(read_description(beside), beside.parent, str(beside))
            break
    if description is None:
        return base
    if isinstance(description, Mapping):
        return base.merged(description, None, "model description")
    return base.merged(read_description(description), Path(description).parent, str(description))
