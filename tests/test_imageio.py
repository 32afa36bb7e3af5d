"""read_xray / resize_area: every supported input decodes to uint8 H x W with bone bright."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from chexnet.data.imageio import ImageReadError, read_xray, read_xray_bytes_resized, read_xray_resized, resize_area
from tests.conftest import xray_like
from tests.dicom_files import write_dicom


@pytest.fixture
def gray():
    """A 48 x 40 chest-like image that uses the full 0..255 range."""
    img = xray_like(np.random.default_rng(1), 48)[:, :40].copy()
    img[0, 0], img[-1, -1] = 0, 255
    return img


# --------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_gray_roundtrip(tmp_path, gray):
    Image.fromarray(gray).save(tmp_path / "a.png")
    out = read_xray(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (48, 40) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, gray)


def test_png_16bit_is_min_max_scaled(tmp_path, gray):
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "full.png")  # 0..65535
    with Image.open(tmp_path / "full.png") as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(read_xray(tmp_path / "full.png"), gray)

    twelve = (gray.astype(np.uint16) * 16 + 100)  # 12-bit data in a 16-bit container
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    expected = np.rint((twelve - twelve.min()) / float(twelve.max() - twelve.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_xray(tmp_path / "twelve.png"), expected)


def test_rgb_and_rgba_give_luminance(tmp_path, gray):
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    alpha = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_xray(tmp_path / "rgb.png"), gray)
    np.testing.assert_array_equal(read_xray(tmp_path / "rgba.png"), gray)  # alpha ignored

    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200  # pure red: luma 0.299 * 200
    Image.fromarray(colour).save(tmp_path / "red.png")
    np.testing.assert_array_equal(read_xray(tmp_path / "red.png"), np.full((4, 4), 60, np.uint8))


def test_jpeg(tmp_path, gray):
    Image.fromarray(gray).save(tmp_path / "a.jpg", quality=95)
    out = read_xray(tmp_path / "a.jpg")
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - gray).mean() < 3


# --------------------------------------------------------------------------- errors


def test_truncated_png_raises_naming_file(tmp_path):
    Image.fromarray(xray_like(np.random.default_rng(0), 128)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png") as info:
        read_xray(tmp_path / "cut.png")
    assert "truncated or corrupt" in info.value.reason


def test_non_image_and_missing_file_raise(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes.png: not a recognized image"):
        read_xray(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match=r"gone.png: file not found"):
        read_xray(tmp_path / "gone.png")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(ImageReadError, match="bad.dcm"):
        read_xray(tmp_path / "bad.dcm")


def test_image_read_error_pickles():
    err = pickle.loads(pickle.dumps(ImageReadError("/x/a.png", "broken")))
    assert (err.path, err.reason, str(err)) == ("/x/a.png", "broken", "/x/a.png: broken")


# --------------------------------------------------------------------------- DICOM


# patient identifiers that the DICOM tests write into headers and then look for in every output
@pytest.fixture
def bone12(gray):
    """12-bit 'attenuation' values: high where bone is (bright in the gray image)."""
    return (gray.astype(np.uint16) * 15 + 50).astype(np.uint16)


def test_dicom_monochrome1_and_2_give_same_bright_bone_image(tmp_path, bone12):
    m2 = write_dicom(tmp_path / "m2.dcm", bone12, "MONOCHROME2")
    m1 = write_dicom(tmp_path / "m1.dcm", (4095 - bone12).astype(np.uint16), "MONOCHROME1")
    a, b = read_xray(m2), read_xray(m1)
    np.testing.assert_array_equal(a, b)
    expected = np.rint((bone12 - bone12.min()) / float(np.ptp(bone12)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(a, expected)  # min-max of 12-bit data; bone (high values) bright
    assert a[bone12 == bone12.max()].min() == 255


def test_dicom_without_dicm_suffix_is_detected_by_magic(tmp_path, bone12):
    path = write_dicom(tmp_path / "image.bin", bone12)
    assert read_xray(path).shape == bone12.shape


def test_dicom_rescale_and_window(tmp_path, bone12):
    path = write_dicom(tmp_path / "w.dcm", bone12, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=2000, WindowWidth=3001)
    values = bone12 * 2.0 - 1000
    lo, hi = 2000 - 0.5 - 1500, 2000 - 0.5 + 1500  # DICOM LINEAR window
    expected = np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_xray(path), expected)

    inverted = write_dicom(tmp_path / "w1.dcm", bone12, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1000,
                           WindowCenter=2000, WindowWidth=3001)
    expected1 = np.rint(np.clip((hi - values) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_xray(inverted), expected1)


def test_dicom_voi_lut_sequence(tmp_path, bone12):
    from pydicom.dataset import Dataset

    lut = (np.sqrt(np.arange(4096) / 4095.0) * 1000).astype(np.uint16)  # a non-linear VOI LUT
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = write_dicom(tmp_path / "lut.dcm", bone12, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    mapped = lut[bone12].astype(float)  # the LUT wins over the window
    expected = np.rint((mapped - mapped.min()) / np.ptp(mapped) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_xray(path), expected)


def test_dicom_8bit_is_kept(tmp_path, gray):
    path = write_dicom(tmp_path / "8.dcm", gray, bits_stored=8)
    np.testing.assert_array_equal(read_xray(path), gray)
    path = write_dicom(tmp_path / "8m1.dcm", 255 - gray, "MONOCHROME1", bits_stored=8)
    np.testing.assert_array_equal(read_xray(path), gray)


def test_truncated_dicom_raises_naming_file(tmp_path, bone12):
    data = write_dicom(tmp_path / "full.dcm", bone12).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - bone12.nbytes // 2])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_xray(tmp_path / "cut.dcm")


def test_dicom_without_pixels_raises(tmp_path, bone12):
    import pydicom

    path = write_dicom(tmp_path / "p.dcm", bone12)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(ImageReadError, match="nopix.dcm: DICOM file has no pixel data"):
        read_xray(tmp_path / "nopix.dcm")


# --------------------------------------------------------------------------- resize


def test_resize_integer_factor_is_box_average():
    img = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    out = resize_area(img, 256)
    assert out.shape == (256, 256) and out.dtype == np.uint8 and out.flags.writeable
    mean = img.reshape(256, 4, 256, 4).mean(axis=(1, 3))
    assert np.abs(out - mean).max() <= 0.5 + 1e-9


def test_resize_non_integer_non_square_and_upscale():
    rng = np.random.default_rng(0)
    flat = np.full((1000, 700), 77, np.uint8)
    np.testing.assert_array_equal(resize_area(flat, 256), np.full((256, 256), 77, np.uint8))  # stretched, area
    img = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    out = resize_area(img, 64)
    assert out.shape == (64, 64)
    assert abs(float(out.mean()) - float(img.mean())) < 2  # area averaging keeps the mean
    assert resize_area(img[:32, :32], 64).shape == (64, 64)
    same = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    np.testing.assert_array_equal(resize_area(same, 64), same)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        resize_area(np.zeros((4, 4, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="2-D uint8"):
        resize_area(np.zeros((4, 4), np.float32), 2)


def test_read_xray_resized_equals_read_then_resize(tmp_path, gray, bone12):
    rng = np.random.default_rng(3)
    big = xray_like(rng, 256)
    files = {
        "png8.png": big, "wide.png": big[:, :200], "small.png": gray,
        "png16.png": big.astype(np.uint16) * 200, "rgba.png": np.dstack([big, big, big, big]),
    }
    for name, arr in files.items():
        Image.fromarray(arr).save(tmp_path / name)
    Image.fromarray(big).save(tmp_path / "a.jpg", quality=90)
    write_dicom(tmp_path / "d.dcm", bone12, "MONOCHROME1")
    for path in sorted(tmp_path.iterdir()):
        for size in (64, 100, 48, 300):
            np.testing.assert_array_equal(read_xray_resized(path, size), resize_area(read_xray(path), size),
                                          err_msg=f"{path.name} at {size}")
            np.testing.assert_array_equal(read_xray_bytes_resized(path.read_bytes(), size, path.name),
                                          read_xray_resized(path, size), err_msg=f"{path.name} at {size}, bytes")
    with pytest.raises(ImageReadError, match="gone.png: file not found"):
        read_xray_resized(tmp_path / "gone.png", 64)
    with pytest.raises(ImageReadError, match="is a directory"):
        read_xray(tmp_path)


def test_read_image_size_is_the_decoded_shape_from_the_header_only(tmp_path, gray, bone12):
    from chexnet.data.imageio import read_image_size

    Image.fromarray(gray).save(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees (decoding applies it)
    Image.fromarray(gray).save(tmp_path / "r.jpg", exif=exif)
    write_dicom(tmp_path / "d.dcm", bone12, "MONOCHROME1")
    write_dicom(tmp_path / "magic.bin", bone12)
    for name in ("a.png", "r.jpg", "d.dcm", "magic.bin"):
        assert read_image_size(tmp_path / name) == read_xray(tmp_path / name).shape, name
    assert read_image_size(tmp_path / "r.jpg") == (40, 48)
    (tmp_path / "notes.png").write_text("this is not an image\n" * 20)
    with pytest.raises(ImageReadError, match="notes.png: not a recognized image"):
        read_image_size(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="gone.dcm: file not found"):
        read_image_size(tmp_path / "gone.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(ImageReadError, match="bad.dcm: no image size in the DICOM header"):
        read_image_size(tmp_path / "bad.dcm")
