"""The uint8 cache: its on-disk format (below), the reader :func:`load_cache`, and the format's constants.

:mod:`chexnet.data.prepare` (``chexnet prepare``) writes it: every image decoded and resized once into a
tool-agnostic uint8 array, from any data source of :mod:`chexnet.data.sources`.

Cache format (version 1)
========================
A cache is a folder with three files::

    CACHE/images.u8    raw uint8 array of shape (N, S, S), C order, no header; row i is image i of
                       the index. Read it with numpy.memmap(path, np.uint8, "r", shape=(N, S, S)),
                       or any tool that reads raw bytes: image i starts at byte i * S * S.
    CACHE/index.csv    one row per image, same order, columns:
                       image, patient_id, split (train|val|test), view,
                       the 14 pathologies in NIH order (0/1; see chexnet.labels.PATHOLOGIES), age, sex
    CACHE/meta.json    format, format_version, size (S), count (N), shape, dtype, pathologies,
                       arguments (data_dir, size, view, seed, val_fraction, dataset: the source of
                       chexnet.data.sources; absent = nih), source (metadata file,
                       split mode official|random, rows excluded by the view filter or the split lists),
                       splits ({train|val|test: {images, patients}}), failed ([{row, image, path,
                       reason}]: images left out), created (start/finish time, runs, workers, versions)

``meta.json`` is written **last**, atomically (temporary file + fsync + rename): a folder without it
is an incomplete cache and :func:`load_cache` refuses it. Images are stretched to S x S with area
averaging, bone bright: step 1 of :mod:`chexnet.preprocess` (:func:`chexnet.preprocess.read_cache_row`).
Index rows follow the source's row order (nih: the metadata file's order after the view filter and
split assignment).

While it runs (resumable work area)
===================================
:func:`chexnet.data.prepare.prepare` works in ``CACHE/work/``::

    plan.json          arguments + digest of the planned rows; written last when the work area is created
    images.u8.part     (P, S, S) uint8, one row per *planned* image (P >= N), written in place (pwrite)
    status.u8          P bytes: 0 pending, 1 done (pixels durable), 2 failed (reason in failed.json)
    failed.json        [{row, image, path, reason}] for status-2 rows

Workers write pixel rows straight into ``images.u8.part``. Every ``COMMIT_SECONDS`` the parent
fsyncs that file, then atomically replaces ``failed.json`` and then ``status.u8``; a row is flagged
done only after its pixels are on disk. After a kill (even SIGKILL or power loss) re-running the
same command re-plans, checks that the plan and arguments are unchanged, and processes only the
pending rows: finished rows are never rewritten and the result is byte-for-byte that of an
uninterrupted run (``meta.json``'s ``created`` block aside).

Failed images (missing, truncated, corrupt, not an image) leave holes in the planned rows. They are
removed once, at finalization: if nothing failed ``images.u8.part`` is simply renamed to
``images.u8``; otherwise the done rows are copied in order into ``images.u8`` (so disk use peaks
at about twice the cache for that step). Then ``index.csv`` (done rows only), ``meta.json``, and
the work area is deleted. A hidden ``CACHE/.lock`` (flock) stops two prepares writing one cache.

Re-running on a complete cache with the same arguments does nothing and says so; different
arguments raise :class:`CacheError` naming the differences (``overwrite=True`` rebuilds instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.splits import SPLITS
from chexnet.labels import PATHOLOGIES

FORMAT = "chexnet-cache"
FORMAT_VERSION = 1
IMAGES, INDEX, META, WORK, LOCK = "images.u8", "index.csv", "meta.json", "work", ".lock"
INDEX_COLUMNS = ["image", "patient_id", "split", "view", *PATHOLOGIES, "age", "sex"]
ARGUMENT_DEFAULTS = {"dataset": "nih"}  # arguments added after format version 1: what their absence means


class CacheError(RuntimeError):
    """A cache that cannot be built, resumed or loaded; the message says why and what to do."""


def load_cache(cache_dir: str | os.PathLike, size: int | None = None) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Open a prepared cache: (read-only images memmap (N, S, S), index DataFrame, meta dict).

    ``size``, if given, must equal the cache's image size. Raises :class:`CacheError` for an
    incomplete, foreign or inconsistent cache.
    """
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / META
    if not meta_path.is_file():
        if (cache_dir / WORK).is_dir():
            raise CacheError(f"{cache_dir}: incomplete cache (no {META}; chexnet prepare was interrupted): "
                             "re-run chexnet prepare with the same arguments to finish it")
        raise CacheError(f"{cache_dir}: not a chexnet cache (no {META}); create it with chexnet prepare")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{meta_path}: unreadable ({exc}); re-run chexnet prepare with --overwrite") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                         f"this chexnet reads {FORMAT!r} version {FORMAT_VERSION}: re-run chexnet prepare")
    count, s = int(meta["count"]), int(meta["size"])
    if size is not None and int(size) != s:
        raise CacheError(f"{cache_dir}: cache images are {s}x{s} but size {size} was requested; "
                         f"prepare a cache with --size {size}")
    if list(meta.get("pathologies", [])) != list(PATHOLOGIES):
        raise CacheError(f"{meta_path}: pathology order {meta.get('pathologies')} differs from {list(PATHOLOGIES)}")
    index = read_index(cache_dir / INDEX)
    if len(index) != count:
        raise CacheError(f"{cache_dir / INDEX}: {len(index)} rows but {META} says count {count}")
    images_path = cache_dir / IMAGES
    expected = count * s * s
    actual = images_path.stat().st_size if images_path.is_file() else None
    if actual != expected:
        raise CacheError(f"{images_path}: size mismatch: {actual if actual is not None else 'missing'} bytes, "
                         f"expected count x size x size = {count} x {s} x {s} = {expected}")
    if count == 0:
        images = np.empty((0, s, s), dtype=np.uint8)
        images.flags.writeable = False
    else:
        images = np.memmap(images_path, dtype=np.uint8, mode="r", shape=(count, s, s))
    return images, index, meta


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cache ``index.csv`` with its dtypes (pathologies uint8, age float, strings kept as '')."""
    path = Path(path)
    dtypes = {"image": str, "patient_id": np.int64, "split": str, "view": str, "sex": str, "age": np.float64}
    dtypes.update({name: np.uint8 for name in PATHOLOGIES})
    try:
        index = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={"age": [""]})
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: unreadable index ({exc})") from None
    if list(index.columns) != INDEX_COLUMNS:
        raise CacheError(f"{path}: columns {list(index.columns)}, expected {INDEX_COLUMNS}")
    bad = ~index["split"].isin(SPLITS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CacheError(f"{path} row {row + 2}: split {index['split'].iat[row]!r} is not one of {SPLITS}")
    return index
