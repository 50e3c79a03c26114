"""Readers of volumes and band images: NIfTI files and DICOM series (a :class:`~occlens.core.volume.Volume`
with its spacing and orientation), multiband TIFFs (a :class:`~occlens.core.volume.Bands` image).

nibabel, pydicom and tifffile are the optional extra ``occlens[medical]``, imported only here and only when a
file is read; without them, one line says what to install. Every unreadable or inconsistent input is one line.
"""

from __future__ import annotations

import importlib
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import ImageError, describe, one_line
from .files import atomic_write
from .volume import Bands, Volume

INSTALL = "pip install 'occlens[medical]'"
# A slice step may differ from the median step by 20 % (positions rounded to 0.1 mm at a 0.625 mm step differ by
# 12 %) before a series is refused; a missing slice doubles a step
SLICE_TOLERANCE = 0.2


def _need(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImageError(f"reading {what} needs the {module} package, which is not installed: {INSTALL}") from None


def _name(path) -> str:
    return one_line(str(path))


def read_volume(path, intensity=None) -> Volume:
    """A volume from a file or folder: NIfTI (``.nii``, ``.nii.gz``) or a folder of one DICOM series.
    ``intensity``: the intensity window (:func:`~occlens.core.intensity.check_window`)."""
    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p, intensity)
    if p.name.lower().endswith((".nii", ".nii.gz")):
        return read_nifti(p, intensity)
    if not p.exists():
        raise ImageError(f"no such file or folder: {_name(p)}")
    raise ImageError(f"{_name(p)} is neither a NIfTI file (.nii, .nii.gz) nor a folder of DICOM files")


def _dhw(affine_ijk: np.ndarray) -> np.ndarray:
    """A NIfTI affine of voxel (i, j, k) as the affine of the same voxels indexed (d, h, w) = (k, j, i)."""
    out = np.array(affine_ijk, dtype=np.float64)
    out[:, [0, 1, 2]] = out[:, [2, 1, 0]]
    return out


nifti_affine = _dhw  # its own inverse: a (d, h, w) affine back to NIfTI's (i, j, k)


def nibabel():
    """The nibabel module, or one line saying what to install."""
    return _need("nibabel", "NIfTI files")


def write_nifti(voxels: np.ndarray, affine, path, description: str = "") -> Path:
    """Write a D x H x W map as a NIfTI file at ``path`` (gzipped when it ends in ``.gz``), atomically: voxel ``(d,
    h, w)`` at NIfTI ``(i, j, k) = (w, h, d)`` under ``affine`` (4 x 4, of voxel ``(d, h, w, 1)``, as
    :func:`read_nifti` gives it), float32, units mm. Returns the path written."""
    import gzip

    nib = nibabel()
    data = np.ascontiguousarray(np.asarray(voxels, dtype=np.float32).transpose(2, 1, 0))
    image = nib.Nifti1Image(data, nifti_affine(np.asarray(affine, dtype=np.float64)))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode("ascii", "replace")[:79]
    p = Path(path)
    raw = image.to_bytes()
    atomic_write(p, lambda f: f.write(gzip.compress(raw, mtime=0) if p.name.lower().endswith(".gz") else raw))
    return p


def read_nifti(path, intensity=None) -> Volume:
    """A NIfTI-1/2 file as a Volume: its (i, j, k) voxels as D x H x W = (k, j, i) (axial slices of rows j and
    columns i for an axial scan), a 4th axis as channels, the file's scaling applied, its affine kept for (d, h, w)."""
    nib = _need("nibabel", "NIfTI files")
    p = Path(path)
    try:
        image = nib.load(str(p))
    except FileNotFoundError:
        raise ImageError(f"no such file: {_name(p)}") from None
    except OSError as err:
        raise ImageError(f"cannot read {_name(p)}: {describe(err)}") from None
    except Exception as err:  # nibabel's ImageFileError, a bad gzip stream, a truncated header
        raise ImageError(f"{_name(p)} is not a NIfTI file nibabel can read ({one_line(str(err))[:120]})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{_name(p)} is a {type(image).__name__}, not a NIfTI image")
    try:
        data = np.asanyarray(image.dataobj)  # the header's scl_slope/scl_inter applied, the dtype kept where it can be
    except Exception as err:  # a file cut short
        raise ImageError(f"cannot read the voxels of {_name(p)} ({one_line(str(err))[:120]})") from None
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        array = data.transpose(2, 1, 0)[None]
    elif data.ndim == 4:
        array = data.transpose(3, 2, 1, 0)
    else:
        raise ImageError(f"{_name(p)} holds a {data.ndim}-D image of shape {data.shape}; a volume has 3 axes (4 with "
                         f"channels)")  # fmt: skip
    return Volume(np.ascontiguousarray(array), affine=_dhw(image.affine), intensity=intensity, source=p.name)


def _dicom_files(folder: Path, pydicom) -> list:
    datasets = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(str(entry))
        except pydicom.errors.InvalidDicomError:
            continue  # not DICOM: a README, a thumbnail
        except OSError as err:
            raise ImageError(f"cannot read {_name(entry)}: {describe(err)}") from None
        if "PixelData" in ds:
            datasets.append(ds)
    return datasets


def _same(datasets, key: str, what: str, folder: Path, tolerance: float = 1e-4):
    values = [np.asarray([float(v) for v in getattr(ds, key)]) for ds in datasets]
    for v in values[1:]:
        if v.shape != values[0].shape or not np.allclose(v, values[0], atol=tolerance):
            raise ImageError(f"the DICOM slices in {_name(folder)} differ in {what} ({list(values[0])} and {list(v)}); "
                             f"give a folder of one consistent series")  # fmt: skip
    return values[0]


def read_dicom_series(folder, intensity=None) -> Volume:
    """A folder holding one DICOM series as a Volume: slices sorted by their position along the slice normal
    (ImagePositionPatient on the normal of ImageOrientationPatient), RescaleSlope/Intercept applied (CT in
    Hounsfield units), spacing from PixelSpacing and the slice positions, the affine in RAS+ mm.

    Refused in one line: no DICOM images, several series, differing orientation, pixel spacing or size, two
    slices at one position, or uneven slice steps (a slice missing)."""
    pydicom = _need("pydicom", "DICOM series")
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"no such folder: {_name(root)}")
    datasets = _dicom_files(root, pydicom)
    if not datasets:
        raise ImageError(f"{_name(root)} holds no DICOM image files; give a folder of one DICOM series")
    series = Counter(str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets)
    if len(series) > 1:
        counts = ", ".join(f"{uid or 'no UID'}: {n} slices" for uid, n in series.most_common(3))
        raise ImageError(f"{_name(root)} mixes {len(series)} DICOM series ({counts}); give a folder of one series")
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in datasets[0]]
    if missing:
        raise ImageError(f"the DICOM slices in {_name(root)} have no {', '.join(missing)}; occlens reads series "
                         f"whose slices say where they lie")  # fmt: skip
    orientation = _same(datasets, "ImageOrientationPatient", "orientation", root)
    pixel = _same(datasets, "PixelSpacing", "pixel spacing", root)
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise ImageError(f"the DICOM slices in {_name(root)} differ in size ({sorted(sizes)}); give one series")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    datasets, positions, along = [datasets[i] for i in order], positions[order], along[order]
    steps = np.diff(along)
    if len(steps) and steps.min() < 1e-3:
        raise ImageError(f"two DICOM slices in {_name(root)} lie at one position ({along[np.argmin(steps)]:g} mm along "
                         f"the normal); give a folder of one series without duplicates")  # fmt: skip
    if len(steps) and np.abs(steps - np.median(steps)).max() > SLICE_TOLERANCE * np.median(steps):
        raise ImageError(f"the DICOM slices in {_name(root)} are unevenly spaced (steps {steps.min():g} to "
                         f"{steps.max():g} mm): a slice is missing or the folder mixes series")  # fmt: skip
    if len(datasets) > 1:
        slice_vector = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:
        slice_vector = normal * float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)
    try:
        slices = [_hounsfield(ds) for ds in datasets]
    except Exception as err:  # a compressed transfer syntax without its decoder, a truncated slice
        raise ImageError(f"cannot decode the DICOM pixels in {_name(root)} ({one_line(str(err))[:120]})") from None
    kind = np.result_type(*slices)
    data = np.stack(slices).astype(kind, copy=False)  # D x H x W
    lps = np.eye(4)
    lps[:3, 0] = slice_vector  # d: from slice to slice
    lps[:3, 1] = col_dir * float(pixel[0])  # h: down the rows (PixelSpacing's first value: between rows)
    lps[:3, 2] = row_dir * float(pixel[1])  # w: along a row
    lps[:3, 3] = positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's patient coordinates are LPS, NIfTI's RAS
    return Volume(data, affine=ras, intensity=intensity, source=root.name or os.fspath(root))


def _hounsfield(ds) -> np.ndarray:
    """A slice's stored values with its RescaleSlope and RescaleIntercept applied (integers stay integers
    when both are)."""
    pixels = ds.pixel_array
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return pixels
    if slope.is_integer() and intercept.is_integer():
        return pixels.astype(np.int32) * int(slope) + int(intercept)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


GDAL_DESCRIPTION = re.compile(r'<Item name="DESCRIPTION" sample="(\d+)"[^>]*>([^<]*)</Item>')


def read_bands(path, intensity=None, names=None) -> Bands:
    """A multiband TIFF as a C x H x W Bands image (bands stored as planes or as samples of each pixel); band
    names from the file's GDAL band descriptions when it has them, or ``names``."""
    tifffile = _need("tifffile", "TIFF files")
    p = Path(path)
    try:
        with tifffile.TiffFile(str(p)) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            metadata = tif.pages[0].tags.get("GDAL_METADATA")
            described = metadata.value if metadata is not None else ""
    except FileNotFoundError:
        raise ImageError(f"no such file: {_name(p)}") from None
    except OSError as err:
        raise ImageError(f"cannot read {_name(p)}: {describe(err)}") from None
    except Exception as err:  # tifffile's TiffFileError and what a broken file raises
        raise ImageError(f"{_name(p)} is not a TIFF file tifffile can read ({one_line(str(err))[:120]})") from None
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim == 3 and axes.endswith("S"):
        data = np.moveaxis(data, -1, 0)  # H x W x C (samples per pixel) -> C x H x W
    if data.ndim not in (2, 3):
        raise ImageError(f"{_name(p)} holds an image of shape {data.shape} (axes {axes}); a band image is C x H x W")
    if names is None and described:
        found = {int(i): text.strip() for i, text in GDAL_DESCRIPTION.findall(str(described))}
        count = 1 if data.ndim == 2 else data.shape[0]
        if found and sorted(found) == list(range(count)):
            names = [found[i] for i in range(count)]
    return Bands(np.ascontiguousarray(data), intensity=intensity, names=names, source=p.name)
