"""Readers behind occlens[medical]: NIfTI files, DICOM series and multiband TIFFs the tests write themselves."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import occlens
from occlens import ImageError
from occlens.core.medical import read_bands, read_dicom_series, read_nifti, read_volume

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---- NIfTI -------------------------------------------------------------------------------------------------

AFFINE = np.array([[-0.8, 0, 0, 90.0], [0, 0.7, 0.1, -120.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_voxels_spacing_and_orientation(tmp_path, suffix):
    data = np.random.default_rng(0).integers(-1000, 2000, size=(6, 5, 4)).astype(np.int16)  # i, j, k
    path = tmp_path / f"scan{suffix}"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    v = read_volume(path, intensity="ct-soft-tissue")
    assert isinstance(v, occlens.Volume) and v.shape == (1, 4, 5, 6) and v.source == f"scan{suffix}"
    assert v.array.dtype.is_floating_point is False
    rng = np.random.default_rng(1)
    for i, j, k in rng.integers(0, (6, 5, 4), size=(20, 3)):
        assert int(v.array[0, k, j, i]) == int(data[i, j, k])  # (d, h, w) = (k, j, i)
        world = AFFINE @ [i, j, k, 1]
        np.testing.assert_allclose(v.affine @ [k, j, i, 1], world, atol=1e-5)  # the same voxel, the same place
    assert v.spacing == pytest.approx((np.hypot(0.1, 2.5), 0.7, 0.8), rel=1e-6)
    assert v.applied_intensity.name == "ct-soft-tissue" and v.unit().shape == (1, 4, 5, 6)


def test_nifti_scaling_is_applied_and_a_4th_axis_is_channels(tmp_path):
    stored = np.arange(3 * 4 * 5 * 2, dtype=np.uint16).reshape(3, 4, 5, 2)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / "two.nii.gz")
    v = read_nifti(tmp_path / "two.nii.gz")
    assert v.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(v.array.numpy(), stored.transpose(3, 2, 1, 0) * 2.0 - 1024.0)


def test_a_file_that_is_not_nifti_is_one_line(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a gzip stream at all" * 20)
    with pytest.raises(ImageError, match=r"scan.nii.gz is not a NIfTI file") as err:
        read_volume(bad)
    one_line(err)
    short = tmp_path / "short.nii"
    short.write_bytes(b"\x00" * 100)
    with pytest.raises(ImageError, match="short.nii is not a NIfTI file"):
        read_volume(short)
    with pytest.raises(ImageError, match="no such file"):
        read_volume(tmp_path / "absent.nii")
    with pytest.raises(ImageError, match="neither a NIfTI file"):
        (tmp_path / "scan.png").write_bytes(b"x")
        read_volume(tmp_path / "scan.png")


def test_a_2d_nifti_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(ImageError, match="2-D image") as err:
        read_nifti(tmp_path / "flat.nii")
    one_line(err)


# ---- DICOM -------------------------------------------------------------------------------------------------

ROW_DIR, COL_DIR = np.array([1.0, 0, 0]), np.array([0, 0.8, -0.6])  # an oblique series
NORMAL = np.cross(ROW_DIR, COL_DIR)


def ct_slice(path, stored: np.ndarray, position, series="1.2.3.4", spacing=(0.7, 0.9), slope=1.0, intercept=-1024.0):
    """A minimal valid CT image: one slice of int16 stored values, written with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, "1.2.3"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    ds.ImageOrientationPatient = [f"{v:g}" for v in (*ROW_DIR, *COL_DIR)]
    ds.ImagePositionPatient = [f"{v:g}" for v in position]
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelData = stored.astype(np.int16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_series(folder, depth=5, rows=6, cols=7, step=2.5, origin=(-50.0, 20.0, 30.0), decimals=None, **kwargs):
    folder.mkdir(exist_ok=True)
    stored = np.random.default_rng(3).integers(0, 3000, size=(depth, rows, cols)).astype(np.int16)
    names = np.random.default_rng(4).permutation(depth)  # file names in another order than the positions
    for d in range(depth):
        position = np.array(origin) + d * step * NORMAL
        position = position if decimals is None else np.round(position, decimals)
        ct_slice(folder / f"IM{names[d]:04d}", stored[d], position, **kwargs)
    return stored


def test_dicom_series_sorted_rescaled_with_spacing_and_affine(tmp_path):
    stored = write_series(tmp_path / "series", slope=2.0, intercept=-1024.0)
    (tmp_path / "series" / "README.txt").write_text("not DICOM")  # skipped
    v = read_volume(tmp_path / "series", intensity="ct-bone")
    assert v.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(v.array[0].numpy(), stored.astype(np.int64) * 2 - 1024)  # sorted by position
    assert v.spacing == pytest.approx((2.5, 0.7, 0.9))
    lps = np.array([-50.0, 20.0, 30.0]) + 3 * 2.5 * NORMAL + 4 * 0.7 * COL_DIR + 5 * 0.9 * ROW_DIR
    np.testing.assert_allclose(v.affine @ [3, 4, 5, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)  # RAS
    assert v.unit().shape == (1, 5, 6, 7)


def test_dicom_positions_rounded_by_the_scanner_are_still_one_series(tmp_path):
    """Positions written to 0.1 mm at a 0.625 mm step: steps of 0.6 and 0.7 mm, evenly spaced on average."""
    write_series(tmp_path / "thin", depth=9, step=0.625, origin=(0.0, 0.0, 0.0), decimals=1)
    v = read_dicom_series(tmp_path / "thin")
    assert v.shape == (1, 9, 6, 7) and v.spacing[0] == pytest.approx(0.625, abs=0.02)


def test_dicom_float_rescale_and_one_slice(tmp_path):
    stored = write_series(tmp_path / "one", depth=1, slope=0.5, intercept=-1000.5)
    v = read_dicom_series(tmp_path / "one")
    np.testing.assert_allclose(v.array[0].numpy(), stored * 0.5 - 1000.5)
    assert v.shape == (1, 1, 6, 7)


def test_dicom_folder_with_two_series_is_one_line(tmp_path):
    write_series(tmp_path / "mixed", depth=3)
    ct_slice(tmp_path / "mixed" / "other", np.zeros((6, 7), np.int16), (0, 0, 100), series="9.9.9")
    with pytest.raises(ImageError, match=r"mixes 2 DICOM series .*give a folder of one series") as err:
        read_volume(tmp_path / "mixed")
    one_line(err)


def test_dicom_missing_slice_and_duplicates_are_refused(tmp_path):
    write_series(tmp_path / "gap2", depth=5)
    positions = {}
    for p in (tmp_path / "gap2").iterdir():
        positions[float(np.dot([float(v) for v in pydicom.dcmread(p).ImagePositionPatient], NORMAL))] = p
    positions[sorted(positions)[2]].unlink()  # the middle slice: the steps are 2.5 mm and one of 5 mm
    with pytest.raises(ImageError, match="unevenly spaced") as err:
        read_dicom_series(tmp_path / "gap2")
    one_line(err)
    dup = tmp_path / "dup"
    write_series(dup, depth=3)
    ct_slice(dup / "again", np.zeros((6, 7), np.int16), (-50.0, 20.0, 30.0))
    with pytest.raises(ImageError, match="lie at one position"):
        read_dicom_series(dup)


def test_dicom_inconsistent_pixel_spacing_empty_folder_and_no_folder(tmp_path):
    write_series(tmp_path / "px", depth=3)
    ct_slice(tmp_path / "px" / "odd", np.zeros((6, 7), np.int16), (-50.0, 20.0, 30.0) + 3 * 2.5 * NORMAL,
             spacing=(0.5, 0.9))  # fmt: skip
    with pytest.raises(ImageError, match="differ in pixel spacing") as err:
        read_dicom_series(tmp_path / "px")
    one_line(err)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="holds no DICOM image files"):
        read_volume(tmp_path / "empty")
    with pytest.raises(ImageError, match="no such folder"):
        read_dicom_series(tmp_path / "absent")


# ---- TIFF --------------------------------------------------------------------------------------------------


def test_multiband_tiff_planar_and_contiguous(tmp_path):
    bands = np.random.default_rng(5).integers(0, 10_000, size=(6, 9, 11)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", bands, photometric="minisblack", planarconfig="separate")
    b = read_bands(tmp_path / "planar.tif", intensity=(0, 10_000))
    assert isinstance(b, occlens.Bands) and b.shape == (6, 9, 11) and b.names is None
    np.testing.assert_array_equal(b.array.numpy(), bands)
    rgb = np.moveaxis(bands[:3], 0, -1).copy()  # H x W x 3, samples of each pixel
    tifffile.imwrite(tmp_path / "contig.tif", rgb, photometric="rgb")
    c = read_bands(tmp_path / "contig.tif", intensity=(0, 10_000))
    np.testing.assert_array_equal(c.array.numpy(), bands[:3])


def test_band_names_from_gdal_metadata_or_given(tmp_path):
    bands = np.zeros((3, 4, 5), np.float32)
    xml = (
        "<GDALMetadata>"
        + "".join(
            f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
            for i, n in enumerate(["B2", "B3", "B8"])
        )
        + "</GDALMetadata>"
    )
    tifffile.imwrite(tmp_path / "s2.tif", bands, photometric="minisblack", planarconfig="separate",
                     extratags=[(42112, "s", 0, xml, True)])  # fmt: skip
    assert read_bands(tmp_path / "s2.tif").names == ("B2", "B3", "B8")
    assert read_bands(tmp_path / "s2.tif", names=["blue", "green", "nir"]).names == ("blue", "green", "nir")


def test_a_file_that_is_not_tiff_is_one_line(tmp_path):
    (tmp_path / "bands.tif").write_bytes(b"GIF89a not a tiff")
    with pytest.raises(ImageError, match="bands.tif is not a TIFF file") as err:
        read_bands(tmp_path / "bands.tif")
    one_line(err)
    with pytest.raises(ImageError, match="no such file"):
        read_bands(tmp_path / "absent.tif")


@pytest.mark.parametrize(("module", "reader", "what"), [("nibabel", "nifti", "NIfTI"), ("pydicom", "dicom", "DICOM"),
                                                         ("tifffile", "tiff", "TIFF")])  # fmt: skip
def test_missing_extra_says_what_to_install(tmp_path, monkeypatch, module, reader, what):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    (tmp_path / "d").mkdir()
    call = {"nifti": lambda: read_volume(tmp_path / "x.nii.gz"), "dicom": lambda: read_volume(tmp_path / "d"),
            "tiff": lambda: read_bands(tmp_path / "x.tif")}[reader]  # fmt: skip
    needs = rf"reading {what}.*needs the {module} package.*pip install 'occlens\[medical\]'"
    with pytest.raises(ImageError, match=needs):
        call()
