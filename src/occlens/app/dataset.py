"""Datasets for ``occlens run``: which images to explain, with their true class as written.

Three layouts, told apart by what is there:

* an **ImageFolder** folder: one sub-folder per class (its name is the class name or index), images
  anywhere below it;
* a **CSV** file with a ``path`` column (relative to the CSV's folder, or absolute), an optional
  ``label`` column (class name or index; empty = unknown) and an optional ``target`` column (the class
  to explain for that image, name or index; empty = the run's ``--target``, else the prediction);
* a **plain folder** of images: no labels.

Image files are recognised by their suffix, NIfTI volumes (``.nii``, ``.nii.gz``) too (a CSV's ``path`` may
also name a folder of one DICOM series); hidden files and folders are skipped. Each image has a
*key*, its path relative to the dataset (POSIX form), which names it in the manifest, and an output
*stem* (:func:`occlens.app.outputs.output_stems`: ``cat/001.jpg`` -> ``cat/001``).
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.errors import ConfigError
from ..core.files import printable

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)

VOLUME_NAMES = (".nii.gz", ".nii")  # NIfTI volumes, explained by a volume model (occlens.volumes)


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its key (path relative to the dataset), where it is, its label as written."""

    key: str
    path: Path
    label: str | None
    target: str | None = None  # a CSV's target column: the class to explain for this image


@dataclass(frozen=True)
class Dataset:
    """The images of ``source`` (``kind`` is ``"imagefolder"``, ``"csv"`` or ``"folder"``), sorted by key."""

    source: Path
    kind: str
    items: tuple[Item, ...]

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)


def is_image(path: Path) -> bool:
    """An image file or a NIfTI volume, by its name (hidden files are not)."""
    known = path.suffix.lower() in IMAGE_SUFFIXES or path.name.lower().endswith(VOLUME_NAMES)
    return known and not path.name.startswith(".")


def list_dataset(source: str | os.PathLike, exclude: str | os.PathLike | None = None) -> Dataset:
    """The images of an ImageFolder folder, a ``path,label`` CSV or a plain folder; ConfigError if none.

    ``exclude`` is a folder to leave out, e.g. the run's output folder when it lies inside the dataset.
    """
    source = Path(source)
    skip = None if exclude is None else Path(exclude).resolve()
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise ConfigError(f"dataset {source} is a file but not a .csv; give a folder or a CSV with path,label")
        return _csv(source)
    if not source.is_dir():
        raise ConfigError(f"dataset {source}: no such folder or CSV file; check the path")
    entries = [p for p in _entries(source) if p.resolve() != skip]
    top = sorted(p for p in entries if p.is_file() and is_image(p))
    folders = sorted(p for p in entries if p.is_dir())
    seen = {_identity(source)} | {_identity(p) for p in folders}  # links back to these are not followed
    skipped: list[Path] = []
    below = {folder: _images_below(folder, skip, seen, skipped) for folder in folders}
    if skipped:
        names = ", ".join(printable(str(p)) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} linked folder(s) listed already, or unreadable: {names}", stacklevel=2)
    classes = [folder for folder in folders if below[folder]]
    if top and classes:
        raise ConfigError(
            f"dataset {source} has both image files ({top[0].name}, ...) and class sub-folders ({classes[0].name}, "
            f"...); put every image in a class sub-folder (ImageFolder) or none (a plain folder)"
        )
    if classes:
        items = [Item(_key(p, source), p, folder.name) for folder in classes for p in below[folder]]
        return _dataset(source, "imagefolder", items)
    return _dataset(source, "folder", [Item(printable(p.name), p, None) for p in top])


def _entries(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as err:
        raise ConfigError(f"cannot list dataset folder {folder}: {err.strerror or err}") from None


def _identity(folder: Path) -> tuple[int, int]:
    info = folder.stat()
    return info.st_dev, info.st_ino


def _images_below(folder: Path, skip: Path | None, seen: set, skipped: list[Path]) -> list[Path]:
    """Image files anywhere below ``folder``, hidden files, hidden folders and ``skip`` left out, sorted.

    Symbolic links to folders are followed, but never into a folder in ``seen`` (the dataset, its class
    folders, every folder listed so far): a link to a parent would list everything again and again.
    Such links, and links to nowhere, are added to ``skipped``.
    """
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for d in dirs:
            path = Path(root, d)
            if d.startswith(".") or (skip is not None and path.resolve() == skip):
                continue
            try:
                identity = _identity(path)
            except OSError:  # a link to nowhere, or a loop of links
                skipped.append(path)
                continue
            if identity in seen:
                skipped.append(path)
                continue
            seen.add(identity)
            kept.append(d)
        dirs[:] = kept
        found += [Path(root, f) for f in files if is_image(Path(f))]
    return sorted(found)


def _key(path: Path, root: Path) -> str:
    return printable(path.relative_to(root).as_posix())


def _csv(source: Path) -> Dataset:
    try:
        with source.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"cannot read dataset CSV {source}: {err}") from None
    if "path" not in columns:
        raise ConfigError(f"dataset CSV {source} has columns {columns}; it needs a header row with path (and label)")
    base = source.parent
    seen: dict[str, Item] = {}
    for line, row in enumerate(rows, start=2):
        if None in row:  # csv.DictReader keeps the fields beyond the header under None
            raise ConfigError(
                f"dataset CSV {source}, line {line}: more fields than the header has ({len(columns)}); "
                f"quote a path or label that holds a comma"
            )
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row["path"]:
            raise ConfigError(f"dataset CSV {source}, line {line}: the path is empty")
        written = Path(row["path"])
        path = written if written.is_absolute() else base / written
        key = printable(PurePosixPath(os.path.normpath(written.as_posix())).as_posix())
        item = Item(key, path, row.get("label") or None, row.get("target") or None)
        if key in seen and (seen[key].label, seen[key].target) != (item.label, item.target):
            raise ConfigError(
                f"dataset CSV {source}, line {line}: {key} is listed twice with different labels or targets "
                f"({seen[key].label!r}, {seen[key].target!r} and {item.label!r}, {item.target!r}); keep one row "
                f"per image"
            )
        seen[key] = item
    return _dataset(source, "csv", list(seen.values()))


def _dataset(source: Path, kind: str, items: list[Item]) -> Dataset:
    if not items:
        suffixes = " ".join([*sorted(IMAGE_SUFFIXES), *VOLUME_NAMES])
        raise ConfigError(f"dataset {source} has no images (files ending in {suffixes}); check the path")
    return Dataset(source, kind, tuple(sorted(items, key=lambda item: item.key)))
