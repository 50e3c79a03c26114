"""The output folder: one stem scheme for ``explain`` and ``run``, the three files of an image, and clean-up.

An image's outputs are ``STEM.png`` (the figure), ``STEM.json`` and ``STEM.npz`` (the result). The stem
is the image's key without its suffix, made safe (no ``..``, no root: ``..png`` has the stem ``_``);
keys whose stems collide keep their suffix (``x_jpg``, ``x_png``). ``occlens explain`` writes flat
into ``--out`` (the file names are the keys; the same name twice is numbered ``x``, ``x-2``);
``occlens run`` keeps the dataset's folders under ``DIR/images/``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from ..core.errors import ConfigError
from ..core.files import atomic_write, printable

SUFFIXES = (".png", ".json", ".npz")
TEMPORARY = re.compile(r"^\..+\.part$")  # what files.atomic_write leaves when killed mid-write


def output_stems(keys: list[str], taken: dict[str, str] | None = None) -> dict[str, str]:
    """Each key's output stem: the key without its suffix, made safe (no ``..``, no root).

    Keys whose stems collide (``x.jpg`` and ``x.png``) keep their suffix as ``x_jpg``, ``x_png``.
    ``taken`` maps keys to stems already in use (from an earlier run); those keys keep them.
    A stem that still collides is a ConfigError.
    """
    taken = taken or {}
    plain = {k: _safe(PurePosixPath(k).with_suffix("").as_posix()) for k in keys}
    counts = Counter(plain.values())
    used = set(taken.values())
    stems = {k: taken[k] if k in taken else plain[k] for k in keys}
    for k in keys:
        if k not in taken and (counts[plain[k]] > 1 or plain[k] in used):
            stems[k] = f"{plain[k]}_{PurePosixPath(k).suffix[1:]}"
    owners: dict[str, str] = {}
    for key, stem in [*taken.items(), *stems.items()]:
        if owners.setdefault(stem, key) != key:
            raise ConfigError(
                f"images {owners[stem]} and {key} would both write outputs named {stem}; "
                f"rename one of them, or use another --out"
            )
    return stems


def file_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The stems of image files written flat into one folder (``occlens explain``): the scheme of
    :func:`output_stems` on the file names, a name given again numbered ``x-2.png``, ``x-3.png``... (a
    number no other name has), so that every image gets outputs of its own."""
    keys: list[str] = []
    given = {printable(Path(p).name) for p in paths}
    for p in paths:
        name = printable(Path(p).name)
        key, n = name, 1
        while key in keys or (n > 1 and key in given):
            n += 1
            key = f"{PurePosixPath(name).stem}-{n}{PurePosixPath(name).suffix}"
        keys.append(key)
    stems = output_stems(keys)
    return [stems[k] for k in keys]


def _safe(stem: str) -> str:
    parts = [p for p in PurePosixPath(stem).parts if p not in ("/", ".", "")]
    return "/".join(_short("__" if p == ".." else p) for p in parts) or "_"


LONGEST_PART = 200  # bytes of one folder or file name of a stem, leaving room for ".json" and a suffix


def _short(part: str) -> str:
    """A stem's folder or file name, cut to :data:`LONGEST_PART` bytes with a hash of the whole when longer
    (file names have at most 255 bytes; the same long name always gets the same short one)."""
    raw = os.fsencode(part)
    if len(raw) <= LONGEST_PART:
        return part
    cut = part[: LONGEST_PART - 11]
    while len(os.fsencode(cut)) > LONGEST_PART - 11:  # whole characters only
        cut = cut[:-1]
    return f"{cut}~{hashlib.sha256(raw).hexdigest()[:10]}"


def outputs(stem: Path) -> list[Path]:
    """The three files of one image whose outputs are named ``stem``."""
    return [stem.with_name(stem.name + suffix) for suffix in SUFFIXES]


def prepare_out(out: Path) -> None:
    """Make the output folder, and check that it is writable (a ConfigError that says so if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".occlens-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to output folder {out}: {err.strerror or err}; choose another with --out"
        ) from None


def write_outputs(result, image, labels: Sequence[str], stem: Path, true_class: bool | None, saliency=None) -> None:
    """STEM.png (the figure), then STEM.npz and STEM.json; each written to a temporary name and renamed."""
    from ..present.figure import plot

    stem.parent.mkdir(parents=True, exist_ok=True)
    figure = plot(result, image, labels=labels, true_class=true_class, saliency=saliency)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    atomic_write(stem.with_name(stem.name + ".png"), lambda f: f.write(png.getvalue()))
    result.save(stem)


def remove_temporary(out: Path, folders: Iterable[str]) -> None:
    """Delete what a killed run left half-written under ``out``'s ``folders`` (temporary files only;
    call with the folder locked), and the write probes of :func:`prepare_out`."""
    for folder in folders:
        for root, _, files in os.walk(out / folder):
            for name in files:
                if TEMPORARY.match(name):
                    Path(root, name).unlink(missing_ok=True)
    for probe in out.glob(".occlens-write-test-*"):
        probe.unlink(missing_ok=True)
