"""Ground truth for ``occlens insight``: boxes or masks, read from the files people keep them in, matched to a
run's images and classes, and drawn at the model's input geometry.

Boxes (``boxes=``), in the photo's pixels:

- a **COCO** JSON file: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
  (``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]``), ``categories`` (``id``, ``name``);
- a folder of **Pascal VOC** XML files: ``<filename>``, ``<size>`` and per ``<object>`` its ``<name>`` and
  ``<bndbox>`` (``xmin ymin xmax ymax``, 1-based and inclusive as VOC writes them: the box covers pixels
  ``xmin-1 .. xmax-1``);
- a **CSV** with a key column (``key``, ``path``, ``image`` or ``file_name``), the corners ``x0,y0,x1,y1``
  (or ``xmin,ymin,xmax,ymax``; x1, y1 exclusive) and optionally a class column (``class``, ``label``,
  ``category`` or ``name``).

Masks (``masks=``): a CSV with a key column and a ``mask`` column (paths relative to the CSV's folder), or a
folder mirroring the dataset's layout (``cat/001.png`` for the image ``cat/001.jpg``: the key with any image
suffix). A mask covers the whole photo (any size: it is scaled with the photo); its non-zero pixels are the
object. The folder is its own argument, never a folder inside the dataset, which would read as a class.

Matching: a file's image names are the run's keys (``cat/001.jpg``), or a name that ends one key only
(``001.jpg`` when one key is ``.../001.jpg``); its category names are the run's class names (or indices). A
file that matches none of the run's images, or whose categories name none of its classes, is refused in one
line; entries that match nothing are counted (:attr:`Truth.unmatched`), boxes of other categories kept as
"other objects". To the model's input: the photo's region that the model sees (its resize and centre crop,
:meth:`occlens.models.preprocess.Preprocess.crop_box`) is scaled onto the H x W input.
"""

from __future__ import annotations

import csv
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..core.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".bmp", ".gif", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
KEY_COLUMNS = ("key", "path", "image", "file_name", "filename")
CLASS_COLUMNS = ("class", "label", "category", "name")
CORNERS = (("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"))


@dataclass(frozen=True)
class ObjectBox:
    """One object's box in the photo's pixels (x to the right, y down; x1, y1 exclusive); ``cls``: the run's
    class index it names, or None for a category that is none of the run's classes."""

    x0: float
    y0: float
    x1: float
    y1: float
    cls: int | None


@dataclass(frozen=True)
class Truth:
    """Ground truth matched to a run: per key its boxes and the photo's (width, height) where the file says,
    or its mask file; ``unmatched``: entries of the file that name none of the run's images."""

    source: str
    kind: str  # "boxes" or "masks"
    boxes: Mapping[str, tuple[ObjectBox, ...]] = field(default_factory=dict)
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    masks: Mapping[str, Path] = field(default_factory=dict)
    unmatched: int = 0
    other_categories: tuple[str, ...] = ()

    @property
    def keys(self) -> set[str]:
        return set(self.boxes) | set(self.masks)

    def __contains__(self, key: str) -> bool:
        """Whether the image ``key`` has ground truth here."""
        return key in self.boxes or key in self.masks


class KeyMatcher:
    """A file's image name to a run key: the key itself, else the one key that ends with ``/NAME``."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = set(keys)
        self.by_tail: dict[str, list[str]] = {}
        for key in self.keys:
            parts = PurePosixPath(key).parts
            for i in range(1, len(parts)):
                self.by_tail.setdefault("/".join(parts[i:]), []).append(key)

    def __call__(self, name: str) -> str | None:
        name = name.replace("\\", "/")
        name = name[2:] if name.startswith("./") else name
        if name in self.keys:
            return name
        found = self.by_tail.get(name, [])
        return found[0] if len(found) == 1 else None

    def stem(self, name: str) -> str | None:
        """A key by its path without the suffix (a mask ``cat/001.png`` for the image ``cat/001.jpg``)."""
        stems = getattr(self, "_stems", None)
        if stems is None:
            stems = {}
            for key in self.keys:
                stems.setdefault(PurePosixPath(key).with_suffix("").as_posix(), []).append(key)
            self._stems = stems
        found = stems.get(PurePosixPath(name).with_suffix("").as_posix(), [])
        return found[0] if len(found) == 1 else None


def read_truth(boxes: str | os.PathLike | None, masks: str | os.PathLike | None, keys: Sequence[str],
               classes: Mapping[int, str]) -> Truth | None:  # fmt: skip
    """The ground truth given (one of ``boxes``, ``masks`` or neither), matched to the run's ``keys`` and
    ``classes`` (index -> name); a ConfigError in one line for what cannot be read or matches nothing."""
    if boxes is not None and masks is not None:
        raise ConfigError("give boxes or masks, not both (--boxes FILE or --masks DIR_OR_CSV)")
    if boxes is None and masks is None:
        return None
    matcher = KeyMatcher(keys)
    if masks is not None:
        return _masks(Path(masks), matcher)
    assert boxes is not None  # neither both nor none: boxes it is
    path = Path(boxes)
    if path.is_dir():
        entries, source = _voc(path), "Pascal VOC folder"
    elif path.is_file() and path.suffix.lower() == ".json":
        entries, source = _coco(path), "COCO file"
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        entries, source = _csv_boxes(path), "CSV"
    elif not path.exists():
        raise ConfigError(f"boxes {path}: no such file or folder; give a COCO JSON file, a folder of Pascal VOC XML "
                          "files or a CSV with box columns")  # fmt: skip
    else:
        raise ConfigError(f"boxes {path}: not a COCO .json file, a folder of VOC .xml files or a .csv; give one of "
                          "those")  # fmt: skip
    return _matched(path, source, entries, matcher, classes)


@dataclass
class _Entry:
    name: str
    size: tuple[int, int] | None
    boxes: list[tuple[float, float, float, float, str | None]]


def _matched(path: Path, source: str, entries: list[_Entry], matcher: KeyMatcher, classes: Mapping[int, str]) -> Truth:
    by_name = {name: k for k, name in classes.items()}
    by_name.update({str(k): k for k in classes})
    boxes: dict[str, list[ObjectBox]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    unmatched = 0
    categories: set[str] = set()  # the box categories that name a class of the run
    other: set[str] = set()  # those that name none
    for e in entries:
        key = matcher(e.name)
        if key is None:
            unmatched += 1
            continue
        if e.size is not None:
            sizes[key] = e.size
        for x0, y0, x1, y1, cat in e.boxes:
            cls = None if cat is None else by_name.get(cat)
            if cat is not None:
                (categories if cls is not None else other).add(cat)
            boxes.setdefault(key, []).append(ObjectBox(x0, y0, x1, y1, cls))
    if not boxes:
        example = entries[0].name if entries else None
        sample = sorted(matcher.keys)[:1]
        raise ConfigError(
            f"boxes {path} ({source}): none of its {len(entries)} images is an image of the run"
            + (f" (its first is {example!r}, the run's first key {sample[0]!r})" if example and sample else "")
            + "; give the ground truth of this run's dataset, with file names as the run's keys"
        )
    if other and not categories:
        raise ConfigError(
            f"boxes {path} ({source}): none of its categories ({', '.join(sorted(other)[:5])}) is a class of the run "
            f"({', '.join(list(classes.values())[:5])}{'...' if len(classes) > 5 else ''}); name the categories "
            f"as the model's classes"
        )
    return Truth(str(path), "boxes", {k: tuple(v) for k, v in boxes.items()}, sizes, {}, unmatched,
                 tuple(sorted(other)))  # fmt: skip


def _coco(path: Path) -> list[_Entry]:
    try:
        data = json.loads(path.read_text())
        images = {im["id"]: im for im in data["images"]}
        names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
        entries = {i: _Entry(str(im["file_name"]), _size(im.get("width"), im.get("height")), [])
                   for i, im in images.items()}  # fmt: skip
        for a in data.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            entries[a["image_id"]].boxes.append((x, y, x + w, y + h, names.get(a.get("category_id"))))
    except OSError as err:
        raise ConfigError(f"boxes {path}: cannot read it ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"boxes {path}: not a COCO annotation file ({type(err).__name__}: {err}); it needs "
                          "images, annotations with bbox [x, y, w, h], and categories") from None  # fmt: skip
    return list(entries.values())


def _voc(folder: Path) -> list[_Entry]:
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise ConfigError(f"boxes {folder}: a folder without .xml files; give a folder of Pascal VOC XML files")
    entries = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
            name = root.findtext("filename")
            if not name:
                raise ValueError("no <filename>")
            size = root.find("size")
            wh = None if size is None else _size(size.findtext("width"), size.findtext("height"))
            boxes = []
            for obj in root.iter("object"):
                b = obj.find("bndbox")
                if b is None:
                    raise ValueError("an <object> without <bndbox>")
                corners = [float(_text(b, t)) for t in ("xmin", "ymin", "xmax", "ymax")]
                boxes.append((corners[0] - 1, corners[1] - 1, corners[2], corners[3], obj.findtext("name")))
        except (ET.ParseError, ValueError, TypeError, AttributeError) as err:
            raise ConfigError(f"boxes {f}: not a Pascal VOC annotation ({err}); each needs <filename> and "
                              "<object><name>/<bndbox> with xmin ymin xmax ymax") from None  # fmt: skip
        rel = f.relative_to(folder).parent.as_posix()
        # the image name as the run may know it: the file name, else with the XML's sub-folder
        entries.append(_Entry(name if rel == "." else f"{rel}/{name}", wh, boxes))
    return entries


def _text(element: ET.Element, tag: str) -> str:
    """The text of ``element``'s child ``tag``; a ValueError when it has none."""
    text = element.findtext(tag)
    if text is None:
        raise ValueError(f"a <bndbox> without <{tag}>")
    return text


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows = list(reader)
            columns = [c.strip().lower() for c in reader.fieldnames or ()]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path}: cannot read it as a CSV ({err})") from None
    rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k is not None} for r in rows]
    return columns, rows


def _column(columns: list[str], choices: Sequence[str], path: Path, what: str) -> str | None:
    found = next((c for c in choices if c in columns), None)
    if found is None and what:
        raise ConfigError(f"{path}: no {what} column (one of {', '.join(choices)}); its columns are "
                          f"{', '.join(columns) or 'none'}")  # fmt: skip
    return found


def _required_column(columns: list[str], choices: Sequence[str], path: Path, what: str) -> str:
    """The column :func:`_column` finds for ``what`` (not empty), which must be there."""
    found = _column(columns, choices, path, what)
    assert found is not None  # _column raises a ConfigError when a named column is missing
    return found


def _csv_boxes(path: Path) -> list[_Entry]:
    columns, rows = _read_csv(path)
    key = _required_column(columns, KEY_COLUMNS, path, "image key")
    corners = next((c for c in CORNERS if all(n in columns for n in c)), None)
    if corners is None:
        raise ConfigError(f"{path}: no box columns (x0,y0,x1,y1 or xmin,ymin,xmax,ymax); its columns are "
                          f"{', '.join(columns)}")  # fmt: skip
    cls = _column(columns, CLASS_COLUMNS, path, "")
    sized = "width" in columns and "height" in columns
    entries: dict[str, _Entry] = {}
    for n, row in enumerate(rows, start=2):
        try:
            x0, y0, x1, y1 = (float(row[c]) for c in corners)
            size = _size(row["width"], row["height"]) if sized else None
        except (ValueError, TypeError):
            raise ConfigError(f"{path} line {n}: the box {', '.join(row.get(c, '') for c in corners)} is not four "
                              "numbers") from None  # fmt: skip
        if not (x1 > x0 and y1 > y0) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ConfigError(f"{path} line {n}: the box ({x0}, {y0}, {x1}, {y1}) is empty; x1 > x0 and y1 > y0")
        e = entries.setdefault(row[key], _Entry(row[key], size, []))
        e.boxes.append((x0, y0, x1, y1, (row.get(cls) or None) if cls else None))
    return list(entries.values())


def _size(width, height) -> tuple[int, int] | None:
    try:
        w, h = int(float(width)), int(float(height))
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _masks(path: Path, matcher: KeyMatcher) -> Truth:
    masks: dict[str, Path] = {}
    unmatched = 0
    if path.is_file():
        columns, rows = _read_csv(path)
        key = _required_column(columns, KEY_COLUMNS, path, "image key")
        column = _required_column(columns, ("mask", "mask_path"), path, "mask")
        for row in rows:
            k = matcher(row[key])
            if k is None:
                unmatched += 1
            else:
                masks[k] = (path.parent / row[column]).resolve()
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                k = matcher.stem(f.relative_to(path).as_posix())
                if k is None:
                    unmatched += 1
                else:
                    masks[k] = f
    else:
        raise ConfigError(f"masks {path}: no such file or folder; give a CSV with key,mask columns or a folder "
                          "mirroring the dataset's layout")  # fmt: skip
    if not masks:
        raise ConfigError(f"masks {path}: none of its {unmatched} masks is of an image of the run; name them as the "
                          "run's keys (cat/001.png for cat/001.jpg)")  # fmt: skip
    return Truth(str(path), "masks", {}, {}, masks, unmatched)


# --------------------------------------------------------------------------------------------------
# at the model's input geometry


def seen_region(preprocess, width: int, height: int) -> tuple[float, float, float, float]:
    """The region ``(left, top, right, bottom)`` of a ``width`` x ``height`` photo that the model sees; the
    whole photo when the run recorded no resize-and-crop preprocessing."""
    if preprocess is None:
        return 0.0, 0.0, float(width), float(height)
    return preprocess.crop_box(width, height)


def boxes_on_input(boxes: Sequence[ObjectBox], region: tuple[float, float, float, float], height: int,
                   width: int) -> list[tuple[float, float, float, float]]:  # fmt: skip
    """The boxes mapped from the photo's pixels onto the H x W input (``region``: what the model sees)."""
    left, top, right, bottom = region
    sx, sy = width / (right - left), height / (bottom - top)
    return [((b.x0 - left) * sx, (b.y0 - top) * sy, (b.x1 - left) * sx, (b.y1 - top) * sy) for b in boxes]


def mask_on_input(path: Path, preprocess, height: int, width: int) -> np.ndarray:
    """A mask file (non-zero: the object) at the H x W input: the region the model sees, scaled (nearest)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L") if img.mode not in ("1", "L", "I", "F", "I;16") else img
            region = seen_region(preprocess, *img.size)
            small = img.resize((width, height), Image.Resampling.NEAREST, box=region)
            return np.asarray(small) != 0
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ConfigError(f"mask {path}: cannot read it as an image ({err})") from None
