"""Every transfer syntax chest X-rays arrive in decodes on a fresh install (pydicom's decoder plugins: pylibjpeg with
its libjpeg, openjpeg and rle plugins, main dependencies of chexnet); palette colour becomes gray; a file whose meta
header lacks the Transfer Syntax UID is read as pydicom's forgiving mode reads it, with a warning.

Each transfer syntax has a file generated here (pydicom writes the native ones and encodes RLE and JPEG 2000, Pillow
JPEG baseline, :func:`encode_jpeg_lossless` below JPEG Lossless Process 14), or one of the test files that ship
inside the pydicom package (JPEG extended 12-bit, JPEG-LS): only those shipped in the wheel, never the ones pydicom
downloads on demand. Nothing here reaches the network.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexnet.data.imageio import ImageReadError, read_xray, read_xray_bytes
from tests.dicom_files import IDENTIFIERS, dicom_bytes, dicom_dataset

def pydicom_test_file(name: str) -> Path:
    """One of the test files inside the installed pydicom package (never one it would download)."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():
        pytest.skip(f"{name} is not shipped inside this pydicom package")
    return path


def chest(rows: int = 40, cols: int = 32, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth chest-like image with noise, using most of ``bits`` bits (uint8 for bits <= 8, else uint16)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    body = 0.75 - 0.3 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lungs = sum(np.exp(-(((x - cx) / 0.14) ** 2 + ((y - 0.45) / 0.25) ** 2)) for cx in (0.3, 0.7))
    img = np.clip(body - 0.45 * lungs + rng.normal(0, 0.02, (rows, cols)), 0, 1) * (2**bits - 1)
    img[0, 0], img[-1, -1] = 0, 2**bits - 1
    return np.rint(img).astype(np.uint8 if bits <= 8 else np.uint16)


def encapsulated(ds, frames: list[bytes], syntax: str):
    """``ds`` with ``frames`` (compressed bytes, one per frame) as its encapsulated pixel data."""
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


# --------------------------------------------------------------------------- a JPEG Lossless (Process 14) encoder


def encode_jpeg_lossless(img: np.ndarray, bits: int, predictor: int = 1) -> bytes:
    """A JPEG Lossless, Non-Hierarchical (Process 14) codestream of a 2-D image (ITU-T T.81 Annex H): one component,
    point transform 0, predictor ``predictor`` (1 = first-order prediction: DICOM's 1.2.840.10008.1.2.4.70), one
    Huffman table in which every difference category 0..16 has a 5-bit code."""
    if img.ndim != 2 or not 2 <= bits <= 16 or predictor not in range(1, 8):
        raise ValueError("one 2-D component of 2..16 bits, predictor 1..7")
    x = img.astype(np.int64)
    rows, cols = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (bits - 1)
    pred[0, 1:] = x[0, :-1]  # first line: the left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the one above
    ra, rb, rc = x[1:, :-1], x[:-1, 1:], x[:-1, :-1]
    pred[1:, 1:] = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
                    7: (ra + rb) >> 1}[predictor]
    diff = (x - pred + 32768) % 65536 - 32768  # modulo 2**16 (H.1.2.1)
    out, acc, nbits = bytearray(), 0, 0
    for d in diff.ravel().tolist():
        size = 16 if d == -32768 else abs(d).bit_length()
        code, length = size, 5  # the category's Huffman code
        if 0 < size < 16:  # then `size` extra bits: d, or d - 1 in two's complement for negative d
            code, length = (code << size) | ((d if d > 0 else d - 1) & ((1 << size) - 1)), 5 + size
        acc, nbits = (acc << length) | code, nbits + length
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1
    if nbits:
        byte = ((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF  # pad with 1 bits
        out.append(byte)
        if byte == 0xFF:
            out.append(0)
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([bits]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") \
        + b"\x01\x01\x11\x00"
    dht = b"\xff\xc4" + (36).to_bytes(2, "big") + b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + b"\x01\x01\x00" + bytes([predictor, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(out) + b"\xff\xd9"


# --------------------------------------------------------------------------- one file per transfer syntax


def native_file(syntax: str, img: np.ndarray, bits: int, **save) -> bytes:
    return dicom_bytes(dicom_dataset(img, bits, syntax=syntax), **save)


def pydicom_encoded(syntax: str, img: np.ndarray, bits: int, **encode) -> bytes:
    """pydicom's own encoders (RLE: pydicom / pylibjpeg-rle; JPEG 2000: pylibjpeg-openjpeg)."""
    ds = dicom_dataset(img, bits)
    ds.compress(syntax, generate_instance_uid=False, **encode)  # the same bytes every run
    return dicom_bytes(ds)


def jpeg_lossless_file(img: np.ndarray, bits: int, predictor: int = 1) -> bytes:
    syntax = "1.2.840.10008.1.2.4.70" if predictor == 1 else "1.2.840.10008.1.2.4.57"
    return dicom_bytes(encapsulated(dicom_dataset(img, bits), [encode_jpeg_lossless(img, bits, predictor)], syntax))


def jpeg_baseline_file(img8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, "JPEG", quality=95)
    return dicom_bytes(encapsulated(dicom_dataset(img8, 8), [buf.getvalue()], "1.2.840.10008.1.2.4.50"))


IMG12 = chest(40, 32, 12)
IMG16 = chest(36, 30, 16, seed=1)
IMG8 = chest(40, 32, 8, seed=2)

# transfer syntax -> (file bytes, the pixels it holds exactly, or None for lossy)
LOSSLESS = {
    "1.2.840.10008.1.2 implicit VR": (lambda: native_file("1.2.840.10008.1.2", IMG12, 12), IMG12),
    "1.2.840.10008.1.2.1 explicit VR": (lambda: native_file("1.2.840.10008.1.2.1", IMG12, 12), IMG12),
    "1.2.840.10008.1.2.1.99 deflated": (lambda: native_file("1.2.840.10008.1.2.1.99", IMG12, 12), IMG12),
    "1.2.840.10008.1.2.5 RLE 12-bit": (lambda: pydicom_encoded("1.2.840.10008.1.2.5", IMG12, 12), IMG12),
    "1.2.840.10008.1.2.5 RLE 8-bit": (lambda: pydicom_encoded("1.2.840.10008.1.2.5", IMG8, 8), IMG8),
    "1.2.840.10008.1.2.4.70 JPEG lossless SV1 12-bit": (lambda: jpeg_lossless_file(IMG12, 12), IMG12),
    "1.2.840.10008.1.2.4.70 JPEG lossless SV1 16-bit": (lambda: jpeg_lossless_file(IMG16, 16), IMG16),
    "1.2.840.10008.1.2.4.70 JPEG lossless SV1 8-bit": (lambda: jpeg_lossless_file(IMG8, 8), IMG8),
    "1.2.840.10008.1.2.4.57 JPEG lossless predictor 6": (lambda: jpeg_lossless_file(IMG12, 12, 6), IMG12),
    "1.2.840.10008.1.2.4.57 JPEG lossless predictor 7": (lambda: jpeg_lossless_file(IMG16, 16, 7), IMG16),
    "1.2.840.10008.1.2.4.90 JPEG 2000 lossless": (lambda: pydicom_encoded("1.2.840.10008.1.2.4.90", IMG12, 12), IMG12),
}


def expected_gray(pixels: np.ndarray, bits: int) -> np.ndarray:
    """read_xray's rule for MONOCHROME2 without rescale or window: 8-bit kept, deeper min-max scaled."""
    if bits <= 8:
        return pixels.astype(np.uint8)
    lo, hi = float(pixels.min()), float(pixels.max())
    return np.rint((pixels - lo) / (hi - lo) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_transfer_syntaxes_decode_exactly(name):
    make, pixels = LOSSLESS[name]
    data = make()
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == name.split()[0]
    np.testing.assert_array_equal(ds.pixel_array, pixels)  # the decoder plugin gives back the very values
    bits = 8 if pixels.dtype == np.uint8 else 12 if pixels is IMG12 else 16
    np.testing.assert_array_equal(read_xray_bytes(data, "x.dcm"), expected_gray(pixels, bits))


def test_jpeg_baseline_and_lossy_jpeg_2000_decode_close():
    out = read_xray_bytes(jpeg_baseline_file(IMG8), "b.dcm")
    assert out.shape == IMG8.shape and np.abs(out.astype(int) - IMG8).mean() < 3
    import pydicom

    lossy = pydicom_encoded("1.2.840.10008.1.2.4.91", IMG12, 12, j2k_cr=[10])
    decoded = pydicom.dcmread(io.BytesIO(lossy)).pixel_array
    assert np.abs(decoded.astype(int) - IMG12).mean() < 0.04 * 4095
    np.testing.assert_array_equal(read_xray_bytes(lossy, "j.dcm"), expected_gray(decoded, 12))


# pydicom's shipped test files: name -> the transfer syntax it is in; each compared with the same image uncompressed
SHIPPED = {
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_lossless_files_match_the_uncompressed_original(name):
    import pydicom

    path = pydicom_test_file(name)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == SHIPPED[name]
    np.testing.assert_array_equal(read_xray(path), read_xray(pydicom_test_file("MR_small.dcm")))


@pytest.mark.parametrize("name, syntax", [
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended, 12-bit
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
    ("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless, RGB
    ("SC_rgb_jls_lossy_line.dcm", "1.2.840.10008.1.2.4.81"),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
])
def test_shipped_compressed_files_decode(name, syntax):
    import pydicom

    path = pydicom_test_file(name)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    out = read_xray(path)
    assert out.dtype == np.uint8 and out.shape == (ds.Rows, ds.Columns) and out.std() > 5


def test_every_decoder_chest_xrays_need_is_installed():
    """The plugins are main dependencies: no transfer syntax of a chest X-ray is missing a decoder."""
    from pydicom.pixels import get_decoder

    for syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                   "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                   "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                   "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"):
        decoder = get_decoder(syntax)
        assert decoder.is_available, (syntax, decoder.missing_dependencies)
        assert "pylibjpeg" in decoder.available_plugins or syntax == "1.2.840.10008.1.2.5", syntax


def test_corrupt_compressed_data_is_a_per_file_error_not_a_missing_plugin():
    data = jpeg_lossless_file(IMG12, 12)
    i = data.index(b"\xff\xd8\xff\xc3")  # the codestream loses its start-of-image marker
    with pytest.raises(ImageReadError) as info:
        read_xray_bytes(data[:i] + b"\x00\x00" + data[i + 2:], "bad.dcm")
    assert info.value.kind == "truncated" and "pip install" not in info.value.reason
    assert "JPEG Lossless" in info.value.reason and "\n" not in info.value.reason and len(info.value.reason) < 500


def test_no_decoder_for_a_video_transfer_syntax_says_so():
    ds = encapsulated(dicom_dataset(IMG8, 8), [b"\x00\x00\x01\xb3" + b"\x00" * 60], "1.2.840.10008.1.2.4.100")
    with pytest.raises(ImageReadError, match="no decoder exists for transfer syntax MPEG2") as info:
        read_xray_bytes(dicom_bytes(ds), "video.dcm")
    assert info.value.kind == "unsupported_encoding"


# --------------------------------------------------------------------------- palette colour


def palette_dataset(indices: np.ndarray, lut_bits: int = 16):
    """PALETTE COLOR with 256-entry red / green / blue LUTs (a gray ramp in green, a colour cast in red and blue)."""
    ds = dicom_dataset(indices, 8, photometric="PALETTE COLOR")
    entries = np.arange(256)
    scale = 257 if lut_bits == 16 else 1
    red, green, blue = (entries // 2) * scale, entries * scale, (255 - entries // 4) * scale
    dtype = np.uint16 if lut_bits == 16 else np.uint8
    for colour, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, lut_bits])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", lut.astype(dtype).tobytes())
    return ds, np.stack([red, green, blue], axis=1) / float(scale * 255)


@pytest.mark.parametrize("lut_bits", [16, 8])
def test_palette_colour_becomes_luminance(lut_bits):
    ds, rgb = palette_dataset(IMG8, lut_bits)
    expected = np.rint(rgb[IMG8] @ np.array([0.299, 0.587, 0.114]) * 255).astype(np.uint8)
    out = read_xray_bytes(dicom_bytes(ds), "pal.dcm")
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=1)


def test_shipped_palette_file_decodes():
    out = read_xray(pydicom_test_file("examples_palette.dcm"))
    assert out.shape == (350, 800)
    assert out.std() > 5


def test_segmented_palette_bomb_is_refused():
    """A 3-word linear segment stands for up to 65,535 entries: 3,000 of them would expand to ~200 M (pydicom builds
    a Python list of them)."""
    ds, _ = palette_dataset(IMG8)
    for colour in ("Red", "Green", "Blue"):
        del ds[f"{colour}PaletteColorLookupTableData"]
        words = [0, 1, 0] + [1, 65535, 65535, 1, 65535, 0] * 1500  # a discrete first entry, then linear ramps
        ds.add_new(f"Segmented{colour}PaletteColorLookupTableData", "OW", np.array(words, "<u2").tobytes())
    with pytest.raises(ImageReadError, match="expands past 65,536 entries"):
        read_xray_bytes(dicom_bytes(ds), "bomb.dcm")


# --------------------------------------------------------------------------- a file without a Transfer Syntax UID


def without_transfer_syntax(syntax: str, preamble: bool = True) -> bytes:
    """A file written in ``syntax`` whose meta header then loses its Transfer Syntax UID (or, with ``preamble``
    False, a bare data set: no preamble, no meta header)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dicom_dataset(IMG12, 12, syntax=syntax)
    if not preamble:
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = syntax == "1.2.840.10008.1.2", syntax != "1.2.840.10008.1.2.2"
        write_dataset(buf, ds)
        return buf.getvalue()
    data = dicom_bytes(ds)
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta.TransferSyntaxUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=syntax == "1.2.840.10008.1.2",
               little_endian=syntax != "1.2.840.10008.1.2.2")
    return buf.getvalue()


@pytest.mark.parametrize("syntax, preamble", [("1.2.840.10008.1.2", True), ("1.2.840.10008.1.2.1", True),
                                              ("1.2.840.10008.1.2", False)])
def test_missing_transfer_syntax_is_read_as_pydicom_forgiving_mode_does(syntax, preamble, caplog):
    import pydicom

    data = without_transfer_syntax(syntax, preamble)
    assert "TransferSyntaxUID" not in pydicom.dcmread(io.BytesIO(data), force=True).file_meta
    with caplog.at_level(logging.WARNING, logger="chexnet.data.imageio"):
        out = read_xray_bytes(data, "nots.dcm")
    np.testing.assert_array_equal(out, expected_gray(IMG12, 12))
    said = [r.getMessage() for r in caplog.records if r.name == "chexnet.data.imageio"]
    name = "Implicit VR Little Endian" if syntax == "1.2.840.10008.1.2" else "Explicit VR Little Endian"
    assert len(said) == 1 and "nots.dcm: no Transfer Syntax UID" in said[0] and name in said[0], said
    for value in IDENTIFIERS.values():
        assert value not in said[0]


def test_missing_transfer_syntax_with_compressed_pixels_is_a_clear_error():
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(jpeg_lossless_file(IMG12, 12)))
    del ds.file_meta.TransferSyntaxUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    with pytest.raises(ImageReadError, match="no Transfer Syntax UID and the pixel data is compressed") as info:
        read_xray_bytes(buf.getvalue(), "c.dcm")
    assert info.value.kind == "unsupported_encoding"


# --------------------------------------------------------------------------- frames and sizes


def test_only_the_first_frame_is_decoded_so_a_lying_frame_count_is_harmless():
    frames = np.stack([IMG12, IMG12[::-1], IMG12[:, ::-1]])
    data = dicom_bytes(dicom_dataset(frames, 12))
    np.testing.assert_array_equal(read_xray_bytes(data, "m.dcm"), expected_gray(IMG12, 12))
    ds = encapsulated(dicom_dataset(IMG12, 12), [encode_jpeg_lossless(IMG12, 12)], "1.2.840.10008.1.2.4.70")
    ds.NumberOfFrames = 2_000_000_000  # one frame of data
    np.testing.assert_array_equal(read_xray_bytes(dicom_bytes(ds), "lie.dcm", max_pixels=10_000),
                                  expected_gray(IMG12, 12))


def test_dicom_size_from_the_header_is_checked_before_decoding_even_without_max_pixels():
    import tracemalloc

    ds = encapsulated(dicom_dataset(IMG12, 12), [encode_jpeg_lossless(IMG12, 12)], "1.2.840.10008.1.2.4.70")
    ds.Rows = ds.Columns = 65535  # 4.3 G pixels of 16 bits claimed by a 2 kB file
    data = dicom_bytes(ds)
    tracemalloc.start()
    try:
        for limit in (None, 100_000_000):
            with pytest.raises(ImageReadError) as info:
                read_xray_bytes(data, "bomb.dcm", max_pixels=limit)
            assert info.value.kind == "too_many_pixels" and "65535 x 65535" in info.value.reason
        assert tracemalloc.get_traced_memory()[1] < 20_000_000
    finally:
        tracemalloc.stop()


def test_a_panicking_plugin_has_the_others_tried(monkeypatch):
    """pyo3's PanicException (a Rust plugin's panic on corrupt data) is a BaseException: it stops pydicom's loop over
    the plugins, so read_xray tries the remaining ones itself."""
    from pydicom.pixels import get_decoder

    class Panic(BaseException):
        pass

    def panicking(src, runner):
        raise Panic("index out of bounds")

    decoder = get_decoder("1.2.840.10008.1.2.4.90")
    if len(decoder.available_plugins) < 2:
        pytest.skip("needs a second JPEG 2000 plugin (Pillow with OpenJPEG)")
    first, second = decoder.available_plugins[:2]
    monkeypatch.setitem(decoder._available, first, panicking)
    data = pydicom_encoded("1.2.840.10008.1.2.4.90", IMG12, 12)
    np.testing.assert_array_equal(read_xray_bytes(data, "p.dcm"), expected_gray(IMG12, 12))
    monkeypatch.setitem(decoder._available, second, panicking)
    with pytest.raises(ImageReadError, match=f"{first}: Panic: index out of bounds; {second}: Panic") as info:
        read_xray_bytes(data, "p.dcm")
    assert info.value.kind == "truncated"


def test_plugins_that_take_the_process_down_are_not_tried(monkeypatch):
    """python-gdcm aborts the process on some damaged JPEG 2000 and JPEG lossless data (an uncaught C++ exception,
    found by the fuzzer): never tried; pylibjpeg-rle panics on damaged RLE: pydicom's own RLE decoder is used."""
    from pydicom.pixels import get_decoder

    from chexnet.data.imageio import _plugins

    def gdcm(src, runner):
        raise AssertionError("gdcm must not be tried")

    j2k = get_decoder("1.2.840.10008.1.2.4.90")
    monkeypatch.setitem(j2k._available, "gdcm", gdcm)
    assert "gdcm" in j2k.available_plugins and "gdcm" not in _plugins("1.2.840.10008.1.2.4.90")
    assert _plugins("1.2.840.10008.1.2.5") == ["pydicom"]
    assert _plugins("1.2.840.10008.1.2.1") == []  # native: no plugin
    np.testing.assert_array_equal(read_xray_bytes(pydicom_encoded("1.2.840.10008.1.2.4.90", IMG12, 12), "g.dcm"),
                                  expected_gray(IMG12, 12))
    for name in list(j2k._available):
        if name != "gdcm":
            monkeypatch.delitem(j2k._available, name)
    assert _plugins("1.2.840.10008.1.2.4.90") == []  # not even as the only one
    with pytest.raises(ImageReadError, match="no decoder plugin for it is installed .python-gdcm is not used") as info:
        read_xray_bytes(pydicom_encoded("1.2.840.10008.1.2.4.90", IMG12, 12), "g.dcm")
    assert info.value.kind == "unsupported_encoding" and "pip install pylibjpeg" in info.value.reason


def test_a_deflated_data_set_that_inflates_to_a_bomb_is_refused_before_pydicom_inflates_it(tmp_path):
    """pydicom inflates a deflated data set whole: 80 MB of zeros in an 80 kB file is refused first (a limit of
    1 M pixels allows 64 MiB), in pieces, with memory to match; the same file under the default limit decodes."""
    import tracemalloc

    ds = dicom_dataset(IMG12, 12, syntax="1.2.840.10008.1.2.1.99")
    ds.EncapsulatedDocument = bytes(80_000_000)
    data = dicom_bytes(ds)
    del ds
    assert len(data) < 200_000
    (tmp_path / "bomb.dcm").write_bytes(data)
    tracemalloc.start()
    try:
        for read in (lambda: read_xray_bytes(data, "bomb.dcm", max_pixels=1_000_000),
                     lambda: read_xray(tmp_path / "bomb.dcm", max_pixels=1_000_000)):
            with pytest.raises(ImageReadError, match="deflated DICOM data set inflates past 67,108,864 bytes") as info:
                read()
            assert info.value.kind == "too_many_pixels"
        assert tracemalloc.get_traced_memory()[1] < 40_000_000
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(read_xray_bytes(data, "ok.dcm"), expected_gray(IMG12, 12))


def test_an_environment_without_the_plugins_is_told_what_to_install(monkeypatch):
    from pydicom.pixels import get_decoder

    decoder = get_decoder("1.2.840.10008.1.2.4.80")
    for name in list(decoder._available):
        monkeypatch.delitem(decoder._available, name)
    with pytest.raises(ImageReadError, match=r"JPEG-LS Lossless.*no decoder plugin for it is installed "
                                             r"\(pip install pylibjpeg pylibjpeg-libjpeg \(JPEG-LS\)") as info:
        read_xray(pydicom_test_file("MR_small_jpeg_ls_lossless.dcm"))
    assert info.value.kind == "unsupported_encoding"
