"""Hostile files: a seeded mutation fuzzer over every kind of file chexnet reads, and the reader's contract on them.

The contract (``chexnet.data.imageio``): on any file, ``read_xray`` and its variants either return a C-contiguous
``uint8`` ``(H, W)`` array or raise :class:`ImageReadError` with a one-line reason and a known ``kind``; no other
exception escapes; no file takes longer than :data:`CASE_SECONDS`; memory stays bounded (a header that claims an
enormous image is refused from the header, before decoding); no patient identifier of a DICOM header is printed.
``chexnet predict`` on a folder of such files prints a result or an error per file and no traceback, and
``chexnet prepare`` skips them and finishes.

Seeds (:func:`seed_files`): PNG 8/16-bit gray, RGB, RGBA, palette; JPEG gray, progressive, EXIF-rotated colour;
TIFF 8/16-bit raw, LZW, deflate; DICOM generated here (explicit / implicit VR, MONOCHROME1 with a window, VOI LUT,
RLE, JPEG 2000, JPEG lossless, JPEG baseline, 3 frames, palette colour, deflated, no transfer syntax) and small test
files that ship inside the pydicom package. Mutations (:func:`mutate`): bit flips (anywhere, or in the header),
truncations, spliced / inserted / deleted random bytes, zeroed blocks, duplicated chunks, wrong signatures, headers
that claim enormous sizes (PNG IHDR with its CRC fixed, JPEG SOF, TIFF tags, DICOM Rows / Columns), DICOM Rows /
Columns that disagree with the pixel data, frame counts that lie, bit depths, samples, photometric interpretations,
transfer syntaxes and pixel-data lengths that do not fit, and malformed rescale / window values. Case ``i`` of seed
``s`` is the same bytes on every run.

The cases run in worker processes (:func:`run_fuzz`): a crash (a segfault in a C decoder) or a hang is caught and
attributed to its case instead of taking the test run down. ``benchmarks/bench_fuzz.py`` runs thousands of cases;
``python -m tests.test_fuzz_images --cases 300`` a few hundred from the command line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexnet.data.imageio import (DEFAULT_MAX_PIXELS, ImageReadError, read_image_size, read_xray, read_xray_bytes,
                                  read_xray_bytes_resized, read_xray_resized)

KINDS = {"not_found", "not_an_image", "truncated", "no_pixel_data", "unsupported_encoding", "too_many_pixels",
         "invalid"}
CASE_SECONDS = 10.0  # the most one file may take (the slowest measured is well under a second: benchmarks/RESULTS.md)
RSS_LIMIT_MB = 1500  # a worker's peak resident memory over all its cases
HANG_SECONDS = 60.0  # a worker silent this long on one case is killed, and the case counted as a hang
RESIZE = 32
SHIPPED = [  # small test files inside the pydicom package (never the ones it downloads on demand)
    "MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm",
    "JPEG2000.dcm", "693_J2KI.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_small_odd_jpeg.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_palette.dcm", "rtdose.dcm",
    "liver_1frame.dcm", "image_dfl.dcm",
]
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- seeds


def _encode(image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt, **options)
    return buf.getvalue()


def seed_files() -> dict[str, bytes]:
    """name -> bytes of every seed; the same bytes on every run (fixed images, UIDs and encoder settings)."""
    import pydicom.data

    from tests.dicom_files import dicom_bytes, dicom_dataset
    from tests.test_dicom_decoders import (chest, encapsulated, encode_jpeg_lossless, jpeg_baseline_file,
                                           palette_dataset, pydicom_encoded, without_transfer_syntax)

    g8, g12 = chest(64, 64, 8, seed=3), chest(48, 40, 12, seed=4)
    rgb = np.dstack([g8, g8[::-1], 255 - g8])
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees
    seeds = {
        "gray8.png": _encode(g8, "PNG"),
        "gray16.png": _encode(g12 * 16, "PNG"),
        "rgb.png": _encode(rgb, "PNG"),
        "rgba.png": _encode(np.dstack([rgb, g8]), "PNG"),
        "palette.png": _encode(Image.fromarray(g8).quantize(32), "PNG"),
        "gray.jpg": _encode(g8, "JPEG", quality=90),
        "progressive.jpg": _encode(g8, "JPEG", quality=80, progressive=True),
        "rotated.jpg": _encode(rgb, "JPEG", exif=exif),
        "gray8.tif": _encode(g8, "TIFF"),
        "gray16.tif": _encode(g12, "TIFF"),
        "lzw.tif": _encode(g8, "TIFF", compression="tiff_lzw"),
        "deflate.tif": _encode(g12, "TIFF", compression="tiff_adobe_deflate"),
    }
    frames = np.stack([g12, g12[::-1], g12[:, ::-1]])
    lut = pydicom.dataset.Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new(0x00283006, "US", (np.sqrt(np.arange(4096) / 4095.0) * 1000).astype(np.uint16).tolist())
    seeds.update({
        "explicit12.dcm": dicom_bytes(dicom_dataset(g12, 12, WindowCenter=2000, WindowWidth=3000, RescaleSlope=1,
                                                    RescaleIntercept=0)),
        "implicit_m1.dcm": dicom_bytes(dicom_dataset(4095 - g12, 12, "MONOCHROME1", syntax="1.2.840.10008.1.2")),
        "voi_lut.dcm": dicom_bytes(dicom_dataset(g12, 12, VOILUTSequence=[lut])),
        "frames3.dcm": dicom_bytes(dicom_dataset(frames, 12)),
        "deflated.dcm": dicom_bytes(dicom_dataset(g12, 12, syntax="1.2.840.10008.1.2.1.99")),
        "rle.dcm": pydicom_encoded("1.2.840.10008.1.2.5", g12, 12),
        "j2k.dcm": pydicom_encoded("1.2.840.10008.1.2.4.90", g12, 12),
        "jpeg_lossless.dcm": dicom_bytes(encapsulated(dicom_dataset(g12, 12), [encode_jpeg_lossless(g12, 12)],
                                                      "1.2.840.10008.1.2.4.70")),
        "jpeg_baseline.dcm": jpeg_baseline_file(g8),
        "palette.dcm": dicom_bytes(palette_dataset(g8)[0]),
        "no_ts.dcm": without_transfer_syntax("1.2.840.10008.1.2"),
    })
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    for name in SHIPPED:
        if (shipped / name).is_file():
            seeds[f"pydicom-{name}"] = (shipped / name).read_bytes()
    return seeds


def seed_kind(name: str) -> str:
    return {".png": "png", ".jpg": "jpeg", ".tif": "tiff", ".dcm": "dicom"}[Path(name).suffix]


# --------------------------------------------------------------------------- mutations


def _flip(data: bytes, rng, header: bool = False) -> tuple[bytes, str]:
    out = bytearray(data)
    span = min(len(out), 512) if header else len(out)
    n = int(rng.integers(1, 17))
    for pos in rng.integers(0, span, n):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out), f"flip{n}{'-header' if header else ''}"


def _truncate(data: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        cut = len(data) - int(rng.integers(1, min(64, len(data)) + 1))
    else:
        cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncate@{cut}/{len(data)}"


def _splice(data: bytes, rng) -> tuple[bytes, str]:
    pos, n = int(rng.integers(0, len(data))), int(rng.integers(1, 257))
    how = rng.integers(0, 3)
    if how == 0:
        return data[:pos] + rng.bytes(n) + data[pos + n:], f"overwrite{n}@{pos}"
    if how == 1:
        return data[:pos] + rng.bytes(n) + data[pos:], f"insert{n}@{pos}"
    return data[:pos] + data[pos + n:], f"delete{n}@{pos}"


def _zero(data: bytes, rng) -> tuple[bytes, str]:
    pos, n = int(rng.integers(0, len(data))), int(rng.integers(1, 1025))
    return data[:pos] + bytes(min(n, len(data) - pos)) + data[pos + n:], f"zero{n}@{pos}"


def _duplicate(data: bytes, rng) -> tuple[bytes, str]:
    a, n, b = int(rng.integers(0, len(data))), int(rng.integers(1, 2049)), int(rng.integers(0, len(data)))
    return data[:b] + data[a:a + n] + data[b:], f"duplicate{n}@{a}->{b}"


SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"\x00" * 8, b"GIF89a", b"%!PS-Adobe-3.0"]


def _signature(data: bytes, rng, kind: str) -> tuple[bytes, str]:
    sig = SIGNATURES[int(rng.integers(0, len(SIGNATURES)))]
    if kind == "dicom" and data[128:132] == b"DICM" and rng.random() < 0.5:
        return data[:128] + rng.bytes(4) + data[132:], "signature-DICM"
    return sig + data[len(sig):], f"signature-{sig[:4]!r}"


HUGE = [0, 1, 255, 10_000, 30_000, 65_535, 100_000, 2**24, 2**31 - 1, 2**32 - 1]


def _png_huge(data: bytes, rng) -> tuple[bytes, str] | None:
    """IHDR with enormous (or zero) width / height / odd depth, its CRC fixed so that PIL reads on."""
    if data[12:16] != b"IHDR":
        return None
    ihdr = bytearray(data[16:29])
    field = int(rng.integers(0, 4))
    if field < 3:
        value = HUGE[int(rng.integers(0, len(HUGE)))]
        if field in (0, 2):
            ihdr[0:4] = value.to_bytes(4, "big")
        if field in (1, 2):
            ihdr[4:8] = value.to_bytes(4, "big")
        label = f"png-size-{value}"
    else:
        ihdr[8], ihdr[9] = int(rng.choice([1, 2, 4, 8, 16, 32])), int(rng.choice([0, 2, 3, 4, 6, 7]))
        label = f"png-depth-{ihdr[8]}-type-{ihdr[9]}"
    out = data[:16] + bytes(ihdr) + (zlib.crc32(b"IHDR" + bytes(ihdr)) if rng.random() < 0.8 else 0).to_bytes(4, "big")
    return out + data[33:], label


def _jpeg_huge(data: bytes, rng) -> tuple[bytes, str] | None:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        i = data.find(marker)
        if i > 0:
            break
    else:
        return None
    out = bytearray(data)
    which = int(rng.integers(0, 4))
    value = int(rng.choice([0, 1, 4096, 30_000, 65_535]))
    if which in (0, 2):
        out[i + 5:i + 7] = value.to_bytes(2, "big")
    if which in (1, 2):
        out[i + 7:i + 9] = value.to_bytes(2, "big")
    if which == 3:
        out[i + 9] = int(rng.choice([0, 2, 4, 255]))  # number of components
        return bytes(out), f"jpeg-components-{out[i + 9]}"
    return bytes(out), f"jpeg-size-{value}"


def _tiff_huge(data: bytes, rng) -> tuple[bytes, str] | None:
    """IFD0 tags of a little-endian TIFF: ImageWidth / Length, BitsPerSample, SamplesPerPixel, strip offsets and
    byte counts set to enormous values, or a tag's count set enormous."""
    if data[:4] != b"II*\x00":
        return None
    out = bytearray(data)
    ifd = int.from_bytes(data[4:8], "little")
    if ifd + 2 > len(data):
        return None
    n = int.from_bytes(data[ifd:ifd + 2], "little")
    entries = [ifd + 2 + 12 * k for k in range(n) if ifd + 14 + 12 * k <= len(data)]
    targets = [e for e in entries if int.from_bytes(data[e:e + 2], "little") in (256, 257, 258, 273, 277, 278, 279)]
    if not targets:
        return None
    e = targets[int(rng.integers(0, len(targets)))]
    tag = int.from_bytes(data[e:e + 2], "little")
    value = HUGE[int(rng.integers(0, len(HUGE)))]
    if rng.random() < 0.25:
        out[e + 4:e + 8] = value.to_bytes(4, "little")  # the count
        return bytes(out), f"tiff-tag{tag}-count-{value}"
    out[e + 2:e + 4] = (4).to_bytes(2, "little")  # LONG
    out[e + 4:e + 8] = (1).to_bytes(4, "little")
    out[e + 8:e + 12] = value.to_bytes(4, "little")
    return bytes(out), f"tiff-tag{tag}-{value}"


def _dicom_lie(data: bytes, rng) -> tuple[bytes, str] | None:
    """Header values that disagree with the pixel data, rewritten with pydicom (placeholders are then swapped for
    values pydicom would not write: '1A', 'nan', ...)."""
    import pydicom
    from pydicom import config

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception:
        return None
    swap = None
    what = int(rng.integers(0, 10))
    with config.disable_value_validation():
        if what == 0:
            ds.Rows = int(rng.choice([0, 1, rows - 1, rows + 1, rows * 2, cols, 65535]) % 65536)
            label = f"dicom-rows-{ds.Rows}"
        elif what == 1:
            ds.Columns = int(rng.choice([0, 1, cols - 1, cols + 1, cols * 3, rows, 65535]) % 65536)
            label = f"dicom-columns-{ds.Columns}"
        elif what == 2:
            ds.Rows = ds.Columns = int(rng.choice([65535, 30000, 12000]))
            label = f"dicom-huge-{ds.Rows}"
        elif what == 3:
            value = rng.choice(["0", "-1", "2", "7", "1000", "2147483647", "1A", "abc", " "])
            ds.NumberOfFrames, swap = "31415926", str(value)
            label = f"dicom-frames-{value.strip()}"
        elif what == 4:
            ds.BitsAllocated = int(rng.choice([0, 1, 8, 12, 16, 32, 64]))
            ds.BitsStored = int(rng.choice([0, 1, 8, 12, 16, 17, 40]))
            label = f"dicom-bits-{ds.BitsAllocated}-{ds.BitsStored}"
        elif what == 5:
            ds.SamplesPerPixel = int(rng.choice([0, 2, 3, 4, 65535]))
            ds.PlanarConfiguration = int(rng.choice([0, 1]))
            label = f"dicom-samples-{ds.SamplesPerPixel}"
        elif what == 6:
            ds.PhotometricInterpretation = str(rng.choice(["RGB", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME3",
                                                           "YBR_ICT", "HSV", "MONOCHROME1"]))
            label = f"dicom-photometric-{ds.PhotometricInterpretation}"
        elif what == 7:
            syntax = str(rng.choice(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                     "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
                                     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201",
                                     "1.2.840.10008.1.2.4.100", "1.2.3.4.5", "none"]))
            if syntax == "none":
                ds.file_meta.pop("TransferSyntaxUID", None)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            label = f"dicom-syntax-{syntax}"
        elif what == 8:
            key = str(rng.choice(["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"]))
            value = str(rng.choice(["nan", "inf", "-inf", "1e308", "0", "-5", "x"]))
            setattr(ds, key, "27182818")
            swap = value
            if rng.random() < 0.5:
                ds.VOILUTFunction = "SIGMOID"
            label = f"dicom-{key}-{value}"
        else:
            ds.PixelRepresentation = int(rng.choice([1, 2]))
            label = f"dicom-pixelrep-{ds.PixelRepresentation}"
        try:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
            out = buf.getvalue()
        except Exception:
            return None
    if swap is not None:
        placeholder = b"31415926" if what == 3 else b"27182818"
        out = out.replace(placeholder, swap.encode().ljust(8)[:8])
    return out, label


def _dicom_pixel_length(data: bytes, rng) -> tuple[bytes, str] | None:
    """The Pixel Data element's length field set to claim more (or fewer, or odd) bytes than follow."""
    i = data.rfind(b"\xe0\x7f\x10\x00")
    if i < 0:
        return None
    at = i + 8 if data[i + 4:i + 6] in (b"OB", b"OW") else i + 4  # explicit VR: tag, VR, 2 reserved, 4-byte length
    value = int(rng.choice([0, 1, 3, 2**31 - 1, 2**32 - 2, len(data) - at - 4 + 2, (len(data) - at) // 2]))
    return data[:at] + value.to_bytes(4, "little") + data[at + 4:], f"dicom-pixel-length-{value}"


def mutate(name: str, data: bytes, rng) -> tuple[bytes, str]:
    """One seeded mutation of ``data`` (sometimes two); returns the bytes and a label naming what was done."""
    kind = seed_kind(name)
    structured = {"png": [_png_huge], "jpeg": [_jpeg_huge], "tiff": [_tiff_huge],
                  "dicom": [_dicom_lie, _dicom_lie, _dicom_pixel_length]}[kind]
    ops = ["flip", "flip-header", "truncate", "splice", "zero", "duplicate", "signature"] + ["structured"] * 4
    labels = []
    for _ in range(2 if rng.random() < 0.2 else 1):
        op = ops[int(rng.integers(0, len(ops)))]
        result = None
        if op == "structured":
            try:
                result = structured[int(rng.integers(0, len(structured)))](data, rng)
            except Exception:  # a seed already mutated beyond what the rewrite handles: a plain mutation instead
                result = None
        if result is None:
            op = op if op != "structured" else "flip"
            result = {"flip": lambda: _flip(data, rng), "flip-header": lambda: _flip(data, rng, header=True),
                      "truncate": lambda: _truncate(data, rng), "splice": lambda: _splice(data, rng),
                      "zero": lambda: _zero(data, rng), "duplicate": lambda: _duplicate(data, rng),
                      "signature": lambda: _signature(data, rng, kind)}[op]()
        data, label = result
        labels.append(label)
        if not data:
            break
    return data, "+".join(labels)


_SEEDS: dict[str, bytes] | None = None


def case(seed: int, i: int) -> tuple[str, bytes, str, str]:
    """Case ``i`` of fuzz run ``seed``: (file name, bytes, seed file, mutation label)."""
    import warnings

    global _SEEDS
    if _SEEDS is None:
        _SEEDS = seed_files()
    rng = np.random.default_rng([seed, i])
    names = sorted(_SEEDS)
    source = names[int(rng.integers(0, len(names)))]
    with warnings.catch_warnings():  # pydicom's, on re-reading a file already mutated: the fuzzer's, not the reader's
        warnings.simplefilter("ignore")
        data, label = mutate(source, _SEEDS[source], rng)
    suffix = Path(source).suffix
    if rng.random() < 0.1:  # the wrong suffix: detection by content (or not)
        suffix = str(rng.choice([".png", ".jpg", ".tif", ".dcm", ".jpeg"]))
        label += f"+named{suffix}"
    return f"case{i:05d}{suffix}", data, source, label


# --------------------------------------------------------------------------- running one case


APIS = ("bytes", "resized-path", "path", "bytes-resized")  # serve's original, prepare, predict, serve's rows


def check(name: str, data: bytes, api: str, folder: Path) -> dict:
    """Run one reader on one file; the outcome: ``decoded``, ``error:KIND`` or ``failure`` (a broken contract)."""
    path = folder / name
    if api in ("resized-path", "path"):
        path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        if api == "bytes":
            arr = read_xray_bytes(data, name, max_pixels=DEFAULT_MAX_PIXELS)
        elif api == "resized-path":
            arr = read_xray_resized(path, RESIZE)  # prepare: no max_pixels
        elif api == "path":
            arr = read_xray(path, max_pixels=DEFAULT_MAX_PIXELS)
        else:
            arr = read_xray_bytes_resized(data, RESIZE, name, max_pixels=DEFAULT_MAX_PIXELS)
        seconds = time.perf_counter() - t0
        resized = api in ("resized-path", "bytes-resized")
        ok = (isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 2 and min(arr.shape) >= 1
              and arr.flags.c_contiguous and (not resized or arr.shape == (RESIZE,) * 2))
        out = {"outcome": "decoded" if ok else "failure", "detail": "" if ok else f"bad array {type(arr)}"}
        if ok:
            out["shape"] = list(arr.shape)
    except ImageReadError as exc:
        seconds = time.perf_counter() - t0
        reason = exc.reason
        ok = (isinstance(reason, str) and reason and "\n" not in reason and len(reason) < 600 and exc.kind in KINDS
              and "Traceback" not in reason and str(exc).startswith(str(path if api.endswith("path") else name)))
        out = {"outcome": f"error:{exc.kind}" if ok else "failure", "detail": reason[:300]}
    except BaseException as exc:  # the contract is broken
        seconds = time.perf_counter() - t0
        out = {"outcome": "failure", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if api.endswith("path"):
        try:
            size = read_image_size(path)
            if not (len(size) == 2 and all(isinstance(v, int) for v in size)):
                out = {"outcome": "failure", "detail": f"read_image_size gave {size!r}"}
        except ImageReadError:
            pass
        except BaseException as exc:
            out = {"outcome": "failure", "detail": f"read_image_size: {type(exc).__name__}: {exc}"[:300]}
        path.unlink(missing_ok=True)
    out["seconds"] = seconds
    return out


def _rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the memory map, which exec replaces;
    getrusage's ru_maxrss does not start again at exec, so a worker started by a big pytest process would report
    the parent's peak (seen: 1,984 MB in the full suite for a worker whose own peak was far below)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def worker(seed: int, cases: list[int], folder: Path, progress: Path, results: Path) -> None:
    """Run ``cases`` in this process: the case index goes to ``progress`` before each, a JSON line to ``results``
    after it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as out:
        for i in cases:
            name, data, source, label = case(seed, i)
            progress.write_text(f"{i}\n")
            record = check(name, data, APIS[i % len(APIS)], folder)
            record.update(case=i, seed_file=source, mutation=label, api=APIS[i % len(APIS)], size=len(data),
                          rss_mb=round(_rss_mb(), 1))
            out.write(json.dumps(record) + "\n")
            out.flush()


def run_fuzz(cases: int, seed: int, work: Path, workers: int = 1, hang_seconds: float = HANG_SECONDS,
             first: int = 0) -> list[dict]:
    """Cases ``first .. first + cases - 1`` in ``workers`` processes; one record per case, with ``crash`` and
    ``hang`` outcomes for a case whose worker died on it or went silent for ``hang_seconds`` (the worker is then
    restarted after that case). Each record has the worker's stderr lines that mention no case (should be none)."""
    work.mkdir(parents=True, exist_ok=True)
    todo = [list(range(first + w, first + cases, workers)) for w in range(workers)]
    records: dict[int, dict] = {}
    procs: dict[int, tuple] = {}

    def start(w: int, remaining: list[int]):
        if not remaining:
            return
        args = json.dumps({"seed": seed, "cases": remaining, "folder": str(work / f"w{w}"),
                           "progress": str(work / f"w{w}.progress"), "results": str(work / f"w{w}.jsonl")})
        (work / f"w{w}.progress").unlink(missing_ok=True)
        err = open(work / f"w{w}.stderr", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tests.test_fuzz_images", "--worker", args], cwd=ROOT,
                                stdout=err, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs[w] = (proc, remaining, time.monotonic(), None)

    def done_cases(w: int) -> set[int]:
        path = work / f"w{w}.jsonl"
        if not path.exists():
            return set()
        got = set()
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["case"]] = record
            got.add(record["case"])
        return got

    for w in range(workers):
        (work / f"w{w}.jsonl").unlink(missing_ok=True)
        start(w, todo[w])
    while procs:
        time.sleep(0.2)
        for w in list(procs):
            proc, remaining, since, last = procs[w]
            progress = work / f"w{w}.progress"
            current = int(progress.read_text() or -1) if progress.exists() else None
            if current != last:
                procs[w] = (proc, remaining, time.monotonic(), current)
                since = time.monotonic()
            rc = proc.poll()
            if rc == 0:
                done_cases(w)
                del procs[w]
                continue
            hung = rc is None and time.monotonic() - since > hang_seconds
            if rc is None and not hung:
                continue
            if hung:
                proc.kill()
                proc.wait()
            finished = done_cases(w)
            bad = current if current is not None and current not in finished else None
            if bad is not None:
                name, data, source, label = case(seed, bad)
                records[bad] = {"case": bad, "outcome": "hang" if hung else "crash", "seed_file": source,
                                "mutation": label, "api": APIS[bad % len(APIS)], "size": len(data),
                                "detail": f"worker {'killed after' if hung else f'exited {rc}'}"
                                          f"{f' {hang_seconds:.0f} s' if hung else ''}", "seconds": None}
                (work / f"{name}").write_bytes(data)  # to reproduce it
            del procs[w]
            rest = [i for i in remaining if i not in finished and i != bad]
            if rest and (bad is not None or rest != remaining):
                start(w, rest)
            elif rest:  # died before reading its first case (building it failed?): count that one and go on
                records[rest[0]] = {"case": rest[0], "outcome": "crash", "detail": f"worker exited {rc} before the "
                                    f"case (see {work / f'w{w}.stderr'})", "seconds": None}
                start(w, rest[1:])
    return [records[i] for i in sorted(records)]


def summarize(records: list[dict]) -> dict:
    outcomes = Counter(r["outcome"] for r in records)
    timed = [r for r in records if r.get("seconds") is not None]
    slowest = max(timed, key=lambda r: r["seconds"]) if timed else None
    return {"cases": len(records), "outcomes": dict(sorted(outcomes.items())),
            "decoded": outcomes.get("decoded", 0),
            "errors": sum(v for k, v in outcomes.items() if k.startswith("error:")),
            "failures": [r for r in records if r["outcome"] in ("failure", "crash", "hang")],
            "slowest_seconds": slowest["seconds"] if slowest else None,
            "slowest_case": {k: slowest.get(k) for k in ("case", "seed_file", "mutation", "api", "outcome")}
            if slowest else None,
            "peak_rss_mb": max((r.get("rss_mb") or 0 for r in records), default=0)}


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description="fuzz chexnet's image reader (see the module docstring)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        worker(spec["seed"], spec["cases"], Path(spec["folder"]), Path(spec["progress"]), Path(spec["results"]))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        summary = summarize(run_fuzz(args.cases, args.seed, Path(args.work or tmp), args.workers))
    print(json.dumps(summary, indent=1))
    return 1 if summary["failures"] else 0


# --------------------------------------------------------------------------- tests


def test_seeds_are_the_same_bytes_every_time_and_all_decode():
    a, b = seed_files(), seed_files()
    assert a == b and len(a) >= 30
    assert {seed_kind(n) for n in a} == {"png", "jpeg", "tiff", "dicom"}
    assert sum(n.startswith("pydicom-") for n in a) >= 10  # the test files shipped inside pydicom
    for name, data in a.items():
        arr = read_xray_bytes(data, name, max_pixels=DEFAULT_MAX_PIXELS)
        assert arr.dtype == np.uint8 and arr.ndim == 2, name


def test_mutations_are_seeded_and_cover_every_kind():
    assert [case(7, i)[1] for i in range(40)] == [case(7, i)[1] for i in range(40)]
    labels = " ".join(case(0, i)[3] for i in range(400))
    for what in ("flip", "truncate", "overwrite", "insert", "zero", "duplicate", "signature", "png-size",
                 "jpeg-size", "tiff-tag", "dicom-rows", "dicom-frames", "dicom-huge", "dicom-syntax",
                 "dicom-pixel-length"):
        assert what in labels, what


def test_fuzzed_files_decode_or_give_a_short_image_read_error(tmp_path):
    """A few hundred seeded cases in a worker process: no other exception, no crash, no hang, each file within
    CASE_SECONDS, the worker's memory bounded, nothing printed (no warning, no identifier)."""
    from tests.dicom_files import IDENTIFIERS

    records = run_fuzz(320, seed=2024, work=tmp_path / "fuzz", workers=1)
    summary = summarize(records)
    assert summary["cases"] == 320
    assert not summary["failures"], json.dumps(summary["failures"][:5], indent=1)
    assert summary["decoded"] > 30 and summary["errors"] > 100, summary["outcomes"]
    assert summary["slowest_seconds"] < CASE_SECONDS, summary["slowest_case"]
    assert summary["peak_rss_mb"] < RSS_LIMIT_MB, summary["peak_rss_mb"]
    stderr = (tmp_path / "fuzz" / "w0.stderr").read_text()
    assert "Traceback" not in stderr and not re.search(r"\w+Warning: ", stderr), stderr[-2000:]
    for value in IDENTIFIERS.values():
        assert all(value not in r.get("detail", "") for r in records)
        assert value not in stderr


def test_header_bombs_are_refused_before_decoding(tmp_path):
    """Headers that claim 4 G pixels (PNG, JPEG, TIFF, DICOM) in a few kB: refused from the header, with or without
    max_pixels, allocating next to nothing."""
    import tracemalloc

    seeds = seed_files()
    png = bytearray(seeds["gray8.png"])
    png[16:24] = (65535).to_bytes(4, "big") * 2
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    jpeg = bytearray(seeds["gray.jpg"])
    i = jpeg.find(b"\xff\xc0")
    jpeg[i + 5:i + 9] = b"\xff\xff\xff\xff"
    bombs = {"bomb.png": bytes(png), "bomb.jpg": bytes(jpeg)}
    rng = np.random.default_rng(0)
    while "bomb.tif" not in bombs:
        data, label = _tiff_huge(seeds["gray8.tif"], rng)
        if label in ("tiff-tag256-4294967295", "tiff-tag257-4294967295"):
            bombs["bomb.tif"] = data
    while "bomb.dcm" not in bombs:
        data, label = _dicom_lie(seeds["jpeg_lossless.dcm"], rng)
        if label == "dicom-huge-65535":
            bombs["bomb.dcm"] = data
    tracemalloc.start()
    try:
        for name, data in bombs.items():
            for limit in (None, DEFAULT_MAX_PIXELS):
                with pytest.raises(ImageReadError) as info:
                    read_xray_bytes(data, name, max_pixels=limit)
                assert info.value.kind in ("too_many_pixels", "truncated"), (name, info.value.reason)
                if name != "bomb.tif":  # PIL reads a TIFF's size from tags that may also be damaged
                    assert info.value.kind == "too_many_pixels", (name, info.value.reason)
        assert tracemalloc.get_traced_memory()[1] < 30_000_000
    finally:
        tracemalloc.stop()


@pytest.mark.filterwarnings("ignore")  # pytest records what the reader would drop: not part of the output
def test_predict_on_a_folder_of_fuzzed_files_prints_a_line_per_file_and_no_traceback(trained_run, tmp_path,
                                                                                      predict_cli):
    """``chexnet predict`` in this process (its warnings go to pytest's record here; that the reader prints none in a
    real process is checked on the fuzz worker's stderr above): exit 0 or 1, one JSON line per file, no traceback,
    no patient identifier."""
    from tests.dicom_files import IDENTIFIERS

    folder = tmp_path / "fuzzed"
    folder.mkdir()
    for i in range(50):
        name, data, _, _ = case(99, i)
        (folder / name.replace(".jpeg", ".jpg")).write_bytes(data)
    rc, out, err = predict_cli(trained_run, folder, "--format", "json")
    assert rc in (0, 1), err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(results) == 50
    for r in results:
        assert (r["error"] is None) == (r["probabilities"] is not None), r
        assert r["error"] is None or ("\n" not in r["error"] and len(r["error"]) < 600), r
        assert r["probabilities"] is None or len(r["probabilities"]) == 14
    failed = sum(r["error"] is not None for r in results)
    assert 0 < failed < 50
    assert f"{50 - failed} of 50 image(s) predicted" in err and f"{failed} failed" in err
    for value in IDENTIFIERS.values():
        assert value not in out + err


def test_prepare_skips_fuzzed_images_and_finishes(make_nih, chexnet_main):
    data = make_nih("nih", patients=8, per_patient=3, size=64)
    images = sorted((data / "images_001" / "images").glob("*.png"))
    rng = np.random.default_rng(5)
    for path in images[::3] + images[1::3]:  # 16 of 24 mutated, 8 intact
        mutated, _ = mutate("x.png", path.read_bytes(), rng)
        path.write_bytes(mutated)
    proc = chexnet_main("prepare", "--data", data, "--out", data.parent / "cache", "--size", 32, "--workers", 2)
    assert "Traceback" not in proc.stdout + proc.stderr
    meta = json.loads((data.parent / "cache" / "meta.json").read_text())
    assert meta["count"] + meta["failed_count"] == 24 and meta["count"] >= 8 and meta["failed_count"] >= 5, meta
    for failure in meta["failed"]:
        assert failure["reason"] and "\n" not in failure["reason"]
        assert failure["image"] in proc.stdout + proc.stderr or meta["failed_count"] > 20


if __name__ == "__main__":
    sys.exit(_main())
