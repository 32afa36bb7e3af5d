"""Decode chest X-rays (PNG, JPEG, TIFF, DICOM) into 8-bit grayscale arrays, and resize them.

:func:`read_xray` is the single entry point used by ``chexnet prepare`` and ``chexnet predict``,
so training and deployment see the same pixels. Its result is always a C-contiguous ``uint8``
array of shape ``(H, W)`` in which **bone is bright** (the usual "MONOCHROME2" look of NIH's PNGs).

Conversion rules
----------------
* 8-bit grayscale (PNG ``L``, JPEG): kept as is.
* Colour (RGB, RGBA, LA, palette, CMYK): ITU-R 601 luminance (PIL ``convert("L")``); alpha dropped.
* More than 8 bits (16-bit PNG/TIFF ``I;16``, 32-bit ``I``, float ``F``): min-max scaled to 0..255.
* DICOM (pydicom), in the order of the DICOM grayscale pipeline:

  1. first frame of a multi-frame object;
  2. modality LUT (Rescale Slope / Intercept or Modality LUT Sequence);
  3. VOI: a VOI LUT Sequence if present (then min-max of its output), else the first
     Window Center / Width (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID`` per VOI LUT Function)
     mapped to 0..255, else min-max of the values (8-bit data with no rescale is kept as is);
  4. ``MONOCHROME1`` (bone dark) is inverted so that bone is bright. Presentation LUT Shape is
     not applied on top: for DX/CR it only restates MONOCHROME1 (INVERSE) or MONOCHROME2 (IDENTITY).

  The inversion is folded into the linear mapping (``(hi - x) / (hi - lo)``), so a MONOCHROME1 file
  and the MONOCHROME2 file holding the complementary values decode to identical arrays.

:func:`resize_area` resizes to a square ``size x size`` with area averaging (integer factors use
PIL ``Image.reduce``, which is exact box averaging and cheap; other downscales use the ``BOX``
filter). Non-square images are **stretched** to the square, keeping the whole field of view, as
CheXNet implementations do (``Resize((S, S))``); no cropping or padding. Upscaling (rare: images
smaller than the cache size) uses bilinear interpolation.

:func:`read_image_size` gives an image's (height, width) as :func:`read_xray` would decode it, from the file's
header only (no pixel data decoded): what box coordinates in original pixels are relative to.

Any failure raises :class:`ImageReadError` naming the file and the reason.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# the largest image predict and serve decode by default (checked from the header, before decoding)
DEFAULT_MAX_PIXELS = 100_000_000
# pydicom decoder plugins by transfer syntax (pydicom 3's pixel-data handlers), named in decode errors
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls (JPEG-LS), or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls (JPEG-LS), or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg (JPEG 2000), or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg (JPEG 2000), or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pip install pylibjpeg pylibjpeg-libjpeg (lossless JPEG), or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pip install pylibjpeg pylibjpeg-libjpeg (lossless JPEG), or python-gdcm",
}
_LUMA = np.array([0.299, 0.587, 0.114])


class ImageReadError(Exception):
    """An image file that cannot be decoded. ``path``, ``reason`` and ``kind`` are attributes.

    ``kind`` sorts the failures for programs (the server's 4xx answers and error counters): ``not_found``,
    ``not_an_image``, ``truncated``, ``no_pixel_data``, ``unsupported_encoding``, ``too_many_pixels``, ``invalid``.
    """

    def __init__(self, path, reason: str, kind: str = "invalid"):
        super().__init__(str(path), reason, kind)  # all three: a pickled copy (worker processes) keeps its kind
        self.path = str(path)
        self.reason = reason
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_xray(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an X-ray image as a C-contiguous ``uint8`` ``(H, W)`` array with bone bright.

    Supports PNG (8/16-bit, gray, RGB, RGBA), JPEG, TIFF and DICOM; see the module docstring.
    Raises :class:`ImageReadError` (naming the file) for missing, truncated, corrupt or non-image files,
    and, with ``max_pixels``, for images with more pixels than that -- checked from the header, before the
    pixel data is decoded (a guard against decompression bombs).
    """
    path = Path(path)
    return _as_array(_decode(path, max_pixels), path)


def read_xray_bytes(data: bytes, name: str = "upload", max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_xray` of a file held in memory (an upload): nothing is written to disk. ``name`` is used in
    error messages and, by its suffix, to recognise DICOM files without the DICM marker."""
    return _as_array(*_decode_bytes(data, name, max_pixels))


def read_xray_resized(path: str | os.PathLike, size: int, max_pixels: int | None = None) -> np.ndarray:
    """``resize_area(read_xray(path), size)``, bit for bit, but faster.

    For 8-bit and colour files the resize runs on the decoded PIL image, which skips the
    full-size array copy (about 2 ms of the ~10 ms a 1024 px PNG costs). Used by ``chexnet prepare``.
    """
    path = Path(path)
    return _resized(_decode(path, max_pixels), path, size)


def read_xray_bytes_resized(data: bytes, size: int, name: str = "upload", max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_xray_resized` of a file held in memory (the server's uploads)."""
    return _resized(*_decode_bytes(data, name, max_pixels), size)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of the image file ``path`` as :func:`read_xray` decodes it, from its header only:
    DICOM's ``Rows`` and ``Columns`` (pydicom, ``stop_before_pixels``; recognised as :func:`read_xray` does),
    else PIL's lazy open (a JPEG's EXIF rotation by 90 degrees swaps the two, as decoding applies it). Raises
    :class:`ImageReadError` naming the file."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found", "not_found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}", "not_found") from None
    with f:
        head = f.read(132)
        f.seek(0)
        if _looks_like_dicom(path, head):
            import pydicom

            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                height, width = int(ds.Rows), int(ds.Columns)
            except Exception as exc:  # pydicom raises many kinds; a header without Rows: AttributeError
                raise ImageReadError(path, f"no image size in the DICOM header ({type(exc).__name__}: {exc})",
                                     "truncated") from None
        else:
            try:
                with Image.open(f) as im:  # reads the header only
                    width, height = im.size
                    if im.format == "JPEG" and im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF Orientation
                        width, height = height, width
            except Image.UnidentifiedImageError:
                raise ImageReadError(path, "not a recognized image format (expected PNG, JPEG, TIFF or DICOM)",
                                     "not_an_image") from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise ImageReadError(path, f"unreadable image header ({type(exc).__name__}: {exc})",
                                     "truncated") from None
    if height < 1 or width < 1:
        raise ImageReadError(path, f"image size {width} x {height} in the header is not positive")
    return height, width


def _decode_bytes(data: bytes, name: str, max_pixels: int | None) -> tuple[Image.Image | np.ndarray, Path]:
    if not data:
        raise ImageReadError(name, "empty file", "not_an_image")
    path = Path(name)
    return _decode_open(io.BytesIO(data), path, max_pixels), path


def _resized(img: Image.Image | np.ndarray, path: Path, size: int) -> np.ndarray:
    if isinstance(img, Image.Image):
        _check_size(size)
        return np.array(_resize_pil(img, size), dtype=np.uint8)
    return resize_area(_as_array(img, path), size)


def resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``uint8`` ``(H, W)`` image to ``(size, size)`` by area averaging (see module docstring)."""
    img = np.asarray(img)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"resize_area expects a 2-D uint8 array, got {img.dtype} {img.shape}")
    _check_size(size)
    pil = Image.fromarray(np.ascontiguousarray(img))  # shares the array's memory
    return np.array(_resize_pil(pil, size), dtype=np.uint8)


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")


def _resize_pil(pil: Image.Image, size: int) -> Image.Image:
    """The resize rule of :func:`resize_area` on a mode ``L`` PIL image."""
    w, h = pil.size
    if (w, h) == (size, size):
        return pil
    if h % size == 0 and w % size == 0:
        return pil.reduce((w // size, h // size))
    if h >= size and w >= size:
        return pil.resize((size, size), Image.Resampling.BOX)
    return pil.resize((size, size), Image.Resampling.BILINEAR)


def _looks_like_dicom(path, head: bytes) -> bool:
    return str(path).lower().endswith(DICOM_SUFFIXES) or head[128:132] == b"DICM"


def _decode(path: Path, max_pixels: int | None = None) -> Image.Image | np.ndarray:
    """Open ``path`` once and decode it: a mode ``L`` PIL image, or a uint8 array (high bit depth, DICOM)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found", "not_found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file", "not_found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}", "not_found") from None
    with f:
        return _decode_open(f, path, max_pixels)


def _decode_open(f, path: Path, max_pixels: int | None = None) -> Image.Image | np.ndarray:
    head = f.read(132)
    f.seek(0)
    if _looks_like_dicom(path, head):
        return _read_dicom(f, path, max_pixels)
    return _read_pil(f, path, max_pixels)


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None, frames: int = 1) -> None:
    total = width * height * max(1, frames)  # a multi-frame DICOM decodes every frame
    if max_pixels is not None and total > max_pixels:
        size = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageReadError(path, f"image of {size} = {total:,} pixels is over the limit of "
                                   f"{max_pixels:,} (--max-pixels); not decoded",
                             "too_many_pixels")


def _as_array(img: Image.Image | np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(path, f"decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


# --------------------------------------------------------------------------- PIL formats


def _read_pil(f, path: Path, max_pixels: int | None = None) -> Image.Image | np.ndarray:
    try:
        im = Image.open(f)  # reads the header only
        _check_pixels(path, *im.size, max_pixels)
        im.load()  # decode now: truncated or corrupt data raises here, not later
        if im.format == "JPEG":
            im = ImageOps.exif_transpose(im)
        return _pil_to_gray(im)
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not a recognized image format (expected PNG, JPEG, TIFF or DICOM)",
                             "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})",
                             "truncated") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large: {exc}", "too_many_pixels") from None


def _pil_to_gray(im: Image.Image) -> Image.Image | np.ndarray:
    """8-bit and colour modes -> a mode ``L`` image; deeper modes -> a min-max scaled uint8 array."""
    if im.mode == "L":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im).astype(np.float64)
        return _linear_to_uint8(values, float(values.min()), float(values.max()))
    return im.convert("L")  # RGB(A), LA, P, 1, CMYK, YCbCr: luminance, alpha dropped


# --------------------------------------------------------------------------- DICOM


def _pydicom_luts():
    """(apply_modality_lut, apply_voi_lut) from pydicom >= 3 (``pydicom.pixels``) or 2.x."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _read_dicom(f, path: Path, max_pixels: int | None = None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(f, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})", "truncated") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data", "no_pixel_data")
    _check_pixels(path, int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), max_pixels,
                  int(ds.get("NumberOfFrames", 1) or 1))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds (missing codec, truncated data, ...)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = f" (transfer syntax {ts.name})" if ts is not None else ""
        hint = ""
        if ts is not None and getattr(ts, "is_compressed", False):
            hint = (f"; compressed DICOM needs a pydicom decoder plugin for {ts.name}: "
                    f"{_DECODER_HINTS.get(str(ts), 'pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm')}")
        raise ImageReadError(path, f"cannot decode DICOM pixel data{syntax}: {type(exc).__name__}: {exc}{hint}",
                             "unsupported_encoding" if hint else "truncated") from None
    try:
        return _dicom_to_gray(ds, arr, path)
    except ImageReadError:
        raise
    except Exception as exc:  # malformed LUT / window attributes
        raise ImageReadError(path, f"invalid DICOM grayscale attributes: {type(exc).__name__}: {exc}") from None


def _dicom_to_gray(ds, arr: np.ndarray, path: Path) -> np.ndarray:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if samples == 3:
        return _dicom_color_to_gray(ds, arr, photometric, bits)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(path, f"unsupported DICOM photometric interpretation {photometric!r}",
                             "unsupported_encoding")
    invert = photometric == "MONOCHROME1"
    apply_modality_lut, apply_voi_lut = _pydicom_luts()
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)

    if _has_voi_lut(ds):
        lut_input = np.rint(values).astype(np.int64)  # LUTs index integer values
        out = np.asarray(apply_voi_lut(lut_input, ds, index=0, prefer_lut=True), dtype=np.float64)
        return _linear_to_uint8(out, float(out.min()), float(out.max()), invert)
    window = _window(ds)
    if window is not None:
        center, width, function = window
        if function == "SIGMOID":
            y = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
            return _unit_to_uint8(1.0 - y if invert else y)
        if function == "LINEAR_EXACT":
            lo, hi = center - width / 2.0, center + width / 2.0
        else:  # LINEAR (PS3.3 C.11.2.1.2.1): a linear ramp over [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]
            lo, hi = center - 0.5 - (width - 1.0) / 2.0, center - 0.5 + (width - 1.0) / 2.0
        return _linear_to_uint8(values, lo, hi, invert)
    identity = "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds
    if bits <= 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0 and identity:
        return _linear_to_uint8(values, 0.0, 255.0, invert)
    return _linear_to_uint8(values, float(values.min()), float(values.max()), invert)


def _dicom_color_to_gray(ds, arr: np.ndarray, photometric: str, bits: int) -> np.ndarray:
    if photometric.startswith("YBR"):
        import pydicom

        if int(pydicom.__version__.split(".")[0]) < 3:  # pydicom 3 returns RGB already
            from pydicom.pixel_data_handlers.util import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
    gray = np.asarray(arr, dtype=np.float64) @ _LUMA
    return _linear_to_uint8(gray, 0.0, float(2**bits - 1))


def _has_voi_lut(ds) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:  # a single value, not a MultiValue
        return float(value)


def _window(ds):
    """(center, width, function) of the first VOI window, or None if absent or unusable."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    if function == "LINEAR" and width == 1:  # a threshold; keep the ramp non-degenerate
        width = 1.0 + 1e-6
    return center, width, function


# --------------------------------------------------------------------------- scaling


def _linear_to_uint8(values: np.ndarray, lo: float, hi: float, invert: bool = False) -> np.ndarray:
    """Map [lo, hi] linearly to 0..255 (clipped, rounded); ``invert`` maps hi to 0 instead."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    t = (hi - values) if invert else (values - lo)
    return _unit_to_uint8(t / (hi - lo))


def _unit_to_uint8(t: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(t, 0.0, 1.0) * 255.0).astype(np.uint8)
