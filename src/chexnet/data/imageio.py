"""Decode chest X-rays (PNG, JPEG, TIFF, DICOM) into 8-bit grayscale arrays, and resize them.

:func:`read_xray` is the single entry point used by ``chexnet prepare`` and ``chexnet predict``,
so training and deployment see the same pixels. Its result is always a C-contiguous ``uint8``
array of shape ``(H, W)`` in which **bone is bright** (the usual "MONOCHROME2" look of NIH's PNGs).

Conversion rules
----------------
* 8-bit grayscale (PNG ``L``, JPEG): kept as is.
* Colour (RGB, RGBA, LA, palette, CMYK): ITU-R 601 luminance (PIL ``convert("L")``); alpha dropped.
* More than 8 bits (16-bit PNG/TIFF ``I;16``, 32-bit ``I``, float ``F``): min-max scaled to 0..255.
* DICOM (pydicom with its decoder plugins: every transfer syntax chest X-rays arrive in decodes, native
  (implicit / explicit VR, big endian, deflated), RLE, JPEG baseline / extended / lossless (Process 14, the
  usual lossless compression of CR and DX archives), JPEG-LS, JPEG 2000 and HTJ2K), in the order of the DICOM
  grayscale pipeline:

  1. first frame of a multi-frame object (only that frame is decoded, so a frame count that lies costs nothing);
  2. modality LUT (Rescale Slope / Intercept or Modality LUT Sequence);
  3. VOI: a VOI LUT Sequence if present (then min-max of its output), else the first
     Window Center / Width (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID`` per VOI LUT Function)
     mapped to 0..255, else min-max of the values (8-bit data with no rescale is kept as is);
  4. ``MONOCHROME1`` (bone dark) is inverted so that bone is bright. Presentation LUT Shape is
     not applied on top: for DX/CR it only restates MONOCHROME1 (INVERSE) or MONOCHROME2 (IDENTITY).

  The inversion is folded into the linear mapping (``(hi - x) / (hi - lo)``), so a MONOCHROME1 file
  and the MONOCHROME2 file holding the complementary values decode to identical arrays.

  Colour DICOM (RGB, YBR) gives ITU-R 601 luminance; ``PALETTE COLOR`` is mapped through its palette
  (pydicom's ``apply_color_lut``) and then to luminance. A file whose meta header has no Transfer Syntax UID is
  read as pydicom's forgiving mode reads it -- in the encoding its data set was found in (implicit or explicit
  VR, little or big endian) -- and a warning naming the file says so (logger ``chexnet.data.imageio``).

:func:`resize_area` resizes to a square ``size x size`` with area averaging (integer factors use
PIL ``Image.reduce``, which is exact box averaging and cheap; other downscales use the ``BOX``
filter). Non-square images are **stretched** to the square, keeping the whole field of view, as
CheXNet implementations do (``Resize((S, S))``); no cropping or padding. Upscaling (rare: images
smaller than the cache size) uses bilinear interpolation.

:func:`read_image_size` gives an image's (height, width) as :func:`read_xray` would decode it, from the file's
header only (no pixel data decoded): what box coordinates in original pixels are relative to.

Hostile files
-------------
Any failure raises :class:`ImageReadError` naming the file and a one-line reason; no other exception escapes
(``tests/test_fuzz_images.py`` holds the reader to that on a few hundred mutated files, ``benchmarks/bench_fuzz.py``
on thousands). Memory and time stay bounded by what the header claims: the pixel count (``max_pixels``; with
``None``, PIL's decompression-bomb limit of ``2 * Image.MAX_IMAGE_PIXELS``, about 179 megapixels, which is applied
to DICOM too) is checked before any pixel is decoded; a DICOM decodes its first frame only; a deflated DICOM data
set that would inflate past 4 bytes per pixel of that limit, and segmented palettes that would expand past 65,536
entries, are refused; only PIL's PNG, JPEG and TIFF decoders are used, and of pydicom's decoder plugins neither
python-gdcm (it aborts the process on some damaged files) nor, for RLE, pylibjpeg-rle (it panics).
pydicom's and PIL's warnings about malformed files are not shown (a DICOM header value in a warning could be a
patient identifier).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# the largest image predict and serve decode by default (checked from the header, before decoding)
DEFAULT_MAX_PIXELS = 100_000_000
# pydicom 3's decoder plugins by transfer syntax, named in decode errors: chexnet's dependencies install them
# (pyproject.toml), so this is a hint for an environment that lacks them
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.80": "pip install pylibjpeg pylibjpeg-libjpeg (JPEG-LS), or pyjpegls",
    "1.2.840.10008.1.2.4.81": "pip install pylibjpeg pylibjpeg-libjpeg (JPEG-LS), or pyjpegls",
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.57": "pip install pylibjpeg pylibjpeg-libjpeg (lossless JPEG)",
    "1.2.840.10008.1.2.4.70": "pip install pylibjpeg pylibjpeg-libjpeg (lossless JPEG)",
}
_DEFAULT_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
_PIL_FORMATS = ("PNG", "JPEG", "TIFF")  # PIL's JPEG opener also gives MPO (a JPEG with a multi-picture extension)
_REASON_CHARS = 300  # the most of a library's error message a reason quotes
_LUMA = np.array([0.299, 0.587, 0.114])
_log = logging.getLogger(__name__)


# Warnings that pydicom and PIL raise about malformed files are dropped while this thread decodes: they can quote
# header values (a patient identifier, in a damaged DICOM) and are noise next to the per-file error. A thread-local
# switch in front of warnings.showwarning, not warnings.catch_warnings (which swaps process-wide filters: unsafe
# with the server's decoding threads).
_quiet = threading.local()
_show_warning = warnings.showwarning


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if getattr(_quiet, "depth", 0):
        return
    _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _showwarning


class _Quiet:
    def __enter__(self):
        _quiet.depth = getattr(_quiet, "depth", 0) + 1

    def __exit__(self, *exc):
        _quiet.depth -= 1


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
    with f, _Quiet():
        head = f.read(132)
        f.seek(0)
        if _looks_like_dicom(path, head):
            import pydicom

            _check_inflated_size(f, path, None)
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            except Exception as exc:  # pydicom raises many kinds on malformed files
                raise ImageReadError(path, f"no image size in the DICOM header ({_brief(exc)})", "truncated") from None
            try:
                height, width = _header_int(ds, "Rows", path), _header_int(ds, "Columns", path)
            except ImageReadError as exc:
                raise ImageReadError(path, f"no image size in the DICOM header ({exc.reason})", "truncated") from None
        else:
            try:
                with Image.open(f, formats=_PIL_FORMATS) as im:  # reads the header only
                    width, height = im.size
                    if im.format in ("JPEG", "MPO") and im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF Orientation
                        width, height = height, width
            except Exception as exc:  # PIL's plugins raise many kinds on malformed headers
                raise _pil_failure(path, exc, header=True) from None
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
    with _Quiet(), np.errstate(all="ignore"):
        try:
            head = f.read(132)
            f.seek(0)
        except OSError as exc:
            raise ImageReadError(path, f"cannot read: {exc.strerror or exc}", "not_found") from None
        if _looks_like_dicom(path, head):
            return _read_dicom(f, path, max_pixels)
        return _read_pil(f, path, max_pixels)


def _brief(exc: BaseException) -> str:
    """``Type: message`` on one line, at most ``_REASON_CHARS`` characters (a library's message can be a page)."""
    text = " ".join(str(exc).split())
    if len(text) > _REASON_CHARS:
        text = text[: _REASON_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pixel_limit(max_pixels: int | None) -> tuple[int | None, str]:
    """The pixel limit to apply and where it comes from: ``max_pixels``, else PIL's decompression-bomb limit."""
    if max_pixels is not None:
        return max_pixels, "--max-pixels"
    if Image.MAX_IMAGE_PIXELS is None:
        return None, ""
    return 2 * int(Image.MAX_IMAGE_PIXELS), "PIL's decompression-bomb limit"


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None, source: str = "--max-pixels") -> None:
    total = width * height
    if max_pixels is not None and total > max_pixels:
        raise ImageReadError(path, f"image of {width} x {height} = {total:,} pixels is over the limit of "
                                   f"{max_pixels:,} ({source}); not decoded",
                             "too_many_pixels")


def _as_array(img: Image.Image | np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(path, f"decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


# --------------------------------------------------------------------------- PIL formats


def _read_pil(f, path: Path, max_pixels: int | None = None) -> Image.Image | np.ndarray:
    try:
        im = Image.open(f, formats=_PIL_FORMATS)  # reads the header only (and refuses decompression bombs)
        _check_pixels(path, *im.size, max_pixels)
        im.load()  # decode now: truncated or corrupt data raises here, not later
        if im.format in ("JPEG", "MPO"):
            im = ImageOps.exif_transpose(im)
        return _pil_to_gray(im)
    except ImageReadError:
        raise
    except Exception as exc:  # PIL's plugins raise many kinds on malformed files (struct.error, IndexError, ...)
        raise _pil_failure(path, exc, header=False) from None


def _pil_failure(path: Path, exc: Exception, header: bool) -> ImageReadError:
    """The ImageReadError (message and kind) for what PIL raised reading ``path``'s header or its pixels."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return ImageReadError(path, "not a recognized image format (expected PNG, JPEG, TIFF or DICOM)", "not_an_image")
    if isinstance(exc, Image.DecompressionBombError):
        return ImageReadError(path, f"image too large: {_brief(exc)}", "too_many_pixels")
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        what = "unreadable image header" if header else "truncated or corrupt image data"
        return ImageReadError(path, f"{what} ({_brief(exc)})", "truncated")
    return ImageReadError(path, f"{'corrupt image header' if header else 'corrupt image'} ({_brief(exc)})")


def _pil_to_gray(im: Image.Image) -> Image.Image | np.ndarray:
    """8-bit and colour modes -> a mode ``L`` image; deeper modes -> a min-max scaled uint8 array."""
    if im.mode == "L":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im).astype(np.float64)
        return _linear_to_uint8(values, *_value_range(values))
    return im.convert("L")  # RGB(A), LA, P, 1, CMYK, YCbCr: luminance, alpha dropped


# --------------------------------------------------------------------------- DICOM

_MAX_LUT_ENTRIES = 65536  # a palette colour LUT has at most 2**16 entries (PS3.3 C.7.6.3.1.5)
_RLE = "1.2.840.10008.1.2.5"
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _read_dicom(f, path: Path, max_pixels: int | None = None) -> np.ndarray:
    import pydicom

    _check_inflated_size(f, path, max_pixels)
    try:
        ds = pydicom.dcmread(f, force=True)
    except Exception as exc:  # pydicom raises many kinds on malformed files (struct.error, ValueError, ...)
        raise ImageReadError(path, f"unreadable DICOM file ({_brief(exc)})", "truncated") from None
    try:
        if "PixelData" not in ds:
            raise ImageReadError(path, "DICOM file has no pixel data", "no_pixel_data")
        rows, columns = _header_int(ds, "Rows", path), _header_int(ds, "Columns", path)
        if rows < 1 or columns < 1:
            raise ImageReadError(path, f"image size {columns} x {rows} in the DICOM header is not positive")
        _check_pixels(path, columns, rows, *_pixel_limit(max_pixels))  # one frame: the only one decoded
        syntax = _transfer_syntax(ds, path)
        arr = _first_frame(ds, path, syntax)
    except ImageReadError:
        raise
    except Exception as exc:  # a malformed element that pydicom converts only when it is read
        raise ImageReadError(path, f"invalid DICOM header ({_brief(exc)})") from None
    try:
        return _dicom_to_gray(ds, arr, path)
    except ImageReadError:
        raise
    except Exception as exc:  # malformed LUT / window attributes
        raise ImageReadError(path, f"invalid DICOM grayscale attributes: {_brief(exc)}") from None


def _check_inflated_size(f, path: Path, max_pixels: int | None) -> None:
    """A deflated data set (Deflated Explicit VR Little Endian) is inflated whole by pydicom, before any header value
    can be checked: a few MB of zeros would become GBs. Inflate it here first, in 16 MB pieces that are dropped, and
    refuse it past 4 bytes per pixel of the pixel limit (at least 64 MiB)."""
    limit, source = _pixel_limit(max_pixels)
    if limit is None:
        return
    max_bytes = max(64 << 20, 4 * limit)
    start = f.tell()
    try:
        if _DEFLATED.encode() not in f.read(65536):
            return
        from pydicom.filereader import _read_file_meta_info, read_preamble

        f.seek(start)
        read_preamble(f, True)
        if _read_file_meta_info(f).get("TransferSyntaxUID") != _DEFLATED:
            return
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof and (chunk := f.read(1 << 20)):
            while chunk and not inflater.eof:
                total += len(inflater.decompress(chunk, 16 << 20))
                if total > max_bytes:
                    raise ImageReadError(path, f"deflated DICOM data set inflates past {max_bytes:,} bytes (4 per "
                                               f"pixel of the limit of {limit:,}, {source}); not decoded",
                                         "too_many_pixels")
                chunk = inflater.unconsumed_tail
    except ImageReadError:
        raise
    except Exception:  # a damaged meta header or stream: pydicom's reading says what is wrong
        return
    finally:
        f.seek(start)


def _header_int(ds, keyword: str, path: Path, default: int | None = None) -> int:
    """A whole-number header value; its text is never quoted (a damaged file may hold anything there)."""
    try:
        value = ds.get(keyword)
        if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
            if default is None:
                raise ImageReadError(path, f"DICOM header has no {keyword}")
            return default
        return int(value)
    except ImageReadError:
        raise
    except Exception:
        raise ImageReadError(path, f"DICOM header's {keyword} is not a whole number") from None


def _transfer_syntax(ds, path: Path):
    """The file's Transfer Syntax UID; where the meta header lacks it, the encoding pydicom read the data set in
    (its forgiving mode), with a warning that says so."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax:
        return syntax
    if ds["PixelData"].is_undefined_length:
        raise ImageReadError(path, "the DICOM file meta header has no Transfer Syntax UID and the pixel data is "
                                   "compressed (encapsulated): its encoding is unknown", "unsupported_encoding")
    implicit, little = ds.original_encoding
    syntax = (ImplicitVRLittleEndian if implicit is not False else
              ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    meta.TransferSyntaxUID = syntax
    _log.warning("%s: no Transfer Syntax UID in the DICOM file meta header; read as %s, the encoding its data set "
                 "was found in (as pydicom's forgiving mode reads it)", path, syntax.name)
    return syntax


def _syntax_name(syntax) -> str:
    name = str(getattr(syntax, "name", "") or syntax)
    return name if len(name) <= 100 else name[:97] + "..."


def _first_frame(ds, path: Path, syntax) -> np.ndarray:
    """The first frame's pixels, and nothing more (a frame count that lies costs nothing), from the first of
    :func:`_plugins` that decodes it; they are tried here one by one, not by pydicom's own loop, which a plugin's
    panic (pyo3's PanicException is a BaseException) would stop."""
    plugins = _plugins(syntax)
    if not plugins and _needs_plugin(syntax):
        raise _decode_error(path, syntax, []) from None
    failures: list[tuple[str, BaseException]] = []
    for plugin in plugins or [""]:
        try:
            ds.pixel_array_options(index=0, decoding_plugin=plugin)
            return ds.pixel_array
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # pydicom and its plugins raise many kinds on missing or corrupt data
            failures.append((plugin, exc))
    raise _decode_error(path, syntax, failures) from None


def _plugins(syntax) -> list[str]:
    """pydicom's available decoder plugins for ``syntax``, in its order, less two that misbehave on damaged data (the
    fuzzer, tests/test_fuzz_images.py, found both): python-gdcm, where installed, is never used (an uncaught C++
    exception aborts the whole process: a server, a prepare worker); for RLE, pylibjpeg-rle (a Rust panic that
    prints a Rust backtrace) gives way to pydicom's own RLE decoder."""
    from pydicom.pixels import get_decoder

    try:
        available = list(get_decoder(syntax).available_plugins)
    except Exception:  # no decoder for this syntax: the attempt says so
        return []
    if str(syntax) == _RLE and "pydicom" in available:
        available = [p for p in available if p != "pylibjpeg"]
    return [p for p in available if p != "gdcm"]


def _needs_plugin(syntax) -> bool:
    """A compressed syntax with a pydicom decoder that has plugins (an unknown syntax: let pydicom say so)."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
        return bool(decoder.available_plugins) or not decoder.is_available
    except Exception:
        return False


def _decode_error(path: Path, syntax, failures: list[tuple[str, BaseException]]) -> ImageReadError:
    from pydicom.pixels import get_decoder

    name = _syntax_name(syntax)
    try:
        decoder = get_decoder(syntax)
    except Exception:  # NotImplementedError: no decoder exists for it (video, JPIP, a private or garbled UID)
        return ImageReadError(path, f"cannot decode DICOM pixel data: no decoder exists for transfer syntax {name}",
                              "unsupported_encoding")
    if not failures:  # no plugin available, or only python-gdcm
        hint = _DECODER_HINTS.get(str(syntax), _DEFAULT_HINT)
        gdcm = " (python-gdcm is not used: it aborts the process on damaged data)" \
            if "gdcm" in decoder.available_plugins else ""
        return ImageReadError(path, f"cannot decode DICOM pixel data (transfer syntax {name}): no decoder plugin "
                                    f"for it is installed{gdcm} ({hint})", "unsupported_encoding")
    reasons = "; ".join(_plugin_failure(plugin, exc) for plugin, exc in failures)
    if len(reasons) > _REASON_CHARS:
        reasons = reasons[: _REASON_CHARS - 3] + "..."
    return ImageReadError(path, f"cannot decode DICOM pixel data (transfer syntax {name}): {reasons}", "truncated")


def _plugin_failure(plugin: str, exc: BaseException) -> str:
    """``plugin: message``, without the wrapping pydicom puts around one plugin's error."""
    text = " ".join(str(exc).split())
    wrapped = "Unable to decode as exceptions were raised by all available plugins:"
    if isinstance(exc, RuntimeError) and text.startswith(wrapped):
        text = text[len(wrapped):].strip()
        if plugin and text.startswith(f"{plugin}: "):
            text = text[len(plugin) + 2:]
        return f"{plugin}: {text}" if plugin else text
    return f"{plugin}: {_brief(exc)}" if plugin else _brief(exc)


def _dicom_to_gray(ds, arr: np.ndarray, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    samples = _header_int(ds, "SamplesPerPixel", path, default=1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    bits = _header_int(ds, "BitsStored", path, default=_header_int(ds, "BitsAllocated", path, default=8))
    if photometric == "PALETTE COLOR" and samples == 1:
        return _palette_to_gray(ds, arr, path)
    if samples == 3:
        return _dicom_color_to_gray(arr, bits, path)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(path, f"unsupported DICOM photometric interpretation {photometric[:32]!r}",
                             "unsupported_encoding")
    if arr.ndim != 2:
        raise ImageReadError(path, f"DICOM pixel data decoded to shape {arr.shape}, not rows x columns")
    invert = photometric == "MONOCHROME1"
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)

    if _has_voi_lut(ds):
        lut_input = np.rint(values).astype(np.int64)  # LUTs index integer values
        out = np.asarray(apply_voi_lut(lut_input, ds, index=0, prefer_lut=True), dtype=np.float64)
        return _linear_to_uint8(out, *_value_range(out), invert)
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
    if bits <= 8 and _header_int(ds, "PixelRepresentation", path, default=0) == 0 and identity:
        return _linear_to_uint8(values, 0.0, 255.0, invert)
    return _linear_to_uint8(values, *_value_range(values), invert)


def _dicom_color_to_gray(arr: np.ndarray, bits: int, path: Path) -> np.ndarray:
    """RGB (pydicom 3 returns YBR converted to RGB) -> luminance, scaled by the stored bit depth."""
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(path, f"DICOM colour pixel data decoded to shape {arr.shape}, not rows x columns x 3")
    bits = min(max(bits, 1), arr.dtype.itemsize * 8)
    gray = np.asarray(arr, dtype=np.float64) @ _LUMA
    return _linear_to_uint8(gray, 0.0, float(2**bits - 1))


def _palette_to_gray(ds, arr: np.ndarray, path: Path) -> np.ndarray:
    """``PALETTE COLOR``: the palette's colours (pydicom's ``apply_color_lut``), then their luminance."""
    from pydicom.pixels import apply_color_lut

    if arr.ndim != 2:
        raise ImageReadError(path, f"DICOM palette pixel data decoded to shape {arr.shape}, not rows x columns")
    _check_segmented_palette(ds, path)
    rgb = apply_color_lut(arr, ds)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4) or rgb.dtype.kind != "u":
        raise ImageReadError(path, f"DICOM palette colour LUT gave shape {rgb.shape}, not rows x columns x 3")
    gray = np.asarray(rgb[..., :3], dtype=np.float64) @ _LUMA
    return _linear_to_uint8(gray, 0.0, float(np.iinfo(rgb.dtype).max))


def _check_segmented_palette(ds, path: Path) -> None:
    """Refuse a segmented palette LUT that would expand past 2**16 entries (each 3-word linear segment can stand for
    65,535 entries, and pydicom expands them into a Python list: a bomb) or that has indirect segments (which can
    nest)."""
    keys = [f"Segmented{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue", "Alpha")]
    if not any(k in ds for k in keys):
        return
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    depth = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 0
    if depth not in (8, 16):
        raise ImageReadError(path, "DICOM palette colour LUT descriptor is missing or invalid")
    little = ds.original_encoding[1] is not False
    dtype = np.dtype("u1") if depth == 8 else np.dtype("<u2" if little else ">u2")
    for key in keys:
        data = ds.get(key)
        if not data:
            continue
        words = np.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize).tolist()
        i, total = 0, 0
        while i + 1 < len(words):
            opcode, length = words[i], words[i + 1]
            i += 2 + (length if opcode == 0 else 1)
            if opcode not in (0, 1):
                raise ImageReadError(path, "segmented DICOM palette colour LUT with indirect or unknown segments: "
                                           "not supported", "unsupported_encoding")
            total += length
            if total > _MAX_LUT_ENTRIES:
                raise ImageReadError(path, f"segmented DICOM palette colour LUT expands past {_MAX_LUT_ENTRIES:,} "
                                           "entries")


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
    try:
        if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
            return None
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except Exception:  # malformed window values: as if there were none
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    if function == "LINEAR" and width == 1:  # a threshold; keep the ramp non-degenerate
        width = 1.0 + 1e-6
    return center, width, function


# --------------------------------------------------------------------------- scaling


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values (a damaged file can hold inf or NaN); (0, 0) if there are none."""
    lo, hi = float(values.min()), float(values.max())
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _linear_to_uint8(values: np.ndarray, lo: float, hi: float, invert: bool = False) -> np.ndarray:
    """Map [lo, hi] linearly to 0..255 (clipped, rounded); ``invert`` maps hi to 0 instead."""
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return np.zeros(values.shape, dtype=np.uint8)
    t = np.subtract(hi, values, dtype=np.float64) if invert else np.subtract(values, lo, dtype=np.float64)
    t /= hi - lo
    return _unit_to_uint8(t, in_place=True)


def _unit_to_uint8(t: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Round ``255 * clip(t, 0, 1)``; fmax / fmin clip as np.clip does and send NaN (a damaged file's) to 0, where a
    cast of NaN is undefined. In place (``in_place``) on a float64 array of the caller's: one full-size temporary
    less for a 100-megapixel image."""
    u = np.fmax(t, 0.0, out=t if in_place else None)
    np.fmin(u, 1.0, out=u)
    u *= 255.0
    np.rint(u, out=u)
    return u.astype(np.uint8)
