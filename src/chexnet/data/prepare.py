"""``chexnet prepare``: decode and resize every image of a data source once into the uint8 cache.

The cache's format, the resumable work area and the crash-safety protocol are described in
:mod:`chexnet.data.cache` (whose constants this module uses); this module writes them: it plans the rows
from a source of :mod:`chexnet.data.sources`, decodes them in worker processes straight into the part file,
commits progress every ``COMMIT_SECONDS``, resumes an interrupted run, records unreadable images, and
finalizes ``images.u8``, ``index.csv``, ``boxes.csv`` (sources with boxes) and (last) ``meta.json``.

The boxes are not part of the plan's digest: they do not touch the pixel rows, and every run (a resumed one
too) re-reads them from the source and writes ``boxes.csv`` at finalization from the rows that ended in the
cache, so a resumed prepare writes what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data import sources
from chexnet.data.cache import (
    ARGUMENT_DEFAULTS,
    BOX_COLUMNS,
    BOXES,
    DIGESTS,
    FORMAT,
    FORMAT_VERSION,
    IMAGES,
    INDEX,
    LOCK,
    META,
    WORK,
    CacheError,
    digests_record,
    index_columns,
    label_columns,
    row_digests,
)
from chexnet.data.imageio import ImageReadError, read_image_size
from chexnet.data.splits import SPLITS, check_patient_disjoint
from chexnet.environment import library_versions, usable_cpus
from chexnet.fileio import atomic_write, check_free_space, disk_full, fsync_dir, is_disk_full
from chexnet.preprocess import read_cache_row

VIEWS = ("PA", "AP")
PENDING, DONE, FAILED = 0, 1, 2
COMMIT_SECONDS = 2.0  # how often finished rows are made durable and flagged done
MAX_CHUNK = 32  # images per task sent to a worker process
SUMMARY_FAILURES = 20  # failures listed in the printed summary (all are in meta.json)


# =========================================================================== public API


def prepare(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: int = 256,
    workers: int | None = None,
    view: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    progress: bool = True,
    overwrite: bool = False,
    dataset: str = sources.DEFAULT_SOURCE,
    options: dict | None = None,
) -> dict:
    """Build (or finish, or confirm) the cache of ``data_dir`` in ``out_dir``; return its meta dict.

    ``dataset`` names the source that reads ``data_dir`` (a key of :data:`chexnet.data.sources.SOURCES`);
    ``options`` are that source's own (chexpert: ``uncertain``, ``blank``), recorded with the arguments.
    ``workers`` processes decode images (default: all usable cores; 1 runs in this process).
    ``view`` keeps only PA or AP images. ``seed`` and ``val_fraction`` go to the source's patient-wise
    split (nih: :func:`chexnet.data.sources.nih.assign_splits`). ``progress`` shows a progress bar and
    prints a summary. ``overwrite`` discards an existing cache or interrupted work area first and rebuilds
    from scratch. Raises :class:`CacheError` if ``out_dir`` holds a cache or an interrupted run with other
    arguments.
    """
    say = _printer(progress)
    args = _arguments(data_dir, size, view, seed, val_fraction, dataset, options or {})
    workers = usable_cpus() if workers is None else max(1, int(workers))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        if overwrite:
            _remove_cache(out_dir)
        if (out_dir / META).exists():
            return _existing_cache(out_dir, args, say)
        plan, source, boxes = _make_plan(args)
        work = _open_work(out_dir, args, plan, say)
        t0 = time.monotonic()
        _check_space(work)
        processed = _run(work, plan, args["size"], workers, progress)
        meta = _finalize(out_dir, work, plan, args, source, workers, boxes)
    _print_summary(meta, out_dir, say, processed, time.monotonic() - t0, workers)
    return meta


def _existing_cache(out_dir: Path, args: dict, say) -> dict:
    """Confirm a complete cache built with the same arguments (a no-op), or refuse naming the differences."""
    old = json.loads((out_dir / META).read_text())
    diff = _differences(old.get("arguments", {}), args)
    if diff:
        raise CacheError(f"{out_dir} holds a cache built with other arguments ({diff}); "
                         "use another --out, or --overwrite to rebuild it")
    _remove_tree(out_dir / WORK)  # a leftover from a kill right after meta.json was written
    say(f"{out_dir}: cache already complete ({old['count']} images of {old['size']}x{old['size']}, "
        "same arguments); nothing to do")
    return old


# =========================================================================== planning


def _arguments(data_dir, size, view, seed, val_fraction, dataset, options) -> dict:
    sources.check_options(dataset, options)  # an unknown name or option fails before anything is touched
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if view is not None:
        view = str(view).strip().upper()
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS} (or None for all), got {view!r}")
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CacheError(f"{data_dir}: data folder not found")
    return {"data_dir": str(data_dir.resolve()), "size": size, "view": view, "seed": int(seed),
            "val_fraction": val_fraction, "dataset": dataset, "options": dict(sorted(options.items()))}


def _differences(old: dict, new: dict) -> str:
    old = {**ARGUMENT_DEFAULTS, **old}  # a cache or work area from before an argument existed
    diffs = [f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in new if old.get(k) != new[k]]
    return "; ".join(diffs)


def _make_plan(args: dict) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """Planned rows (index columns + ``path``, '' when the file is missing), the source summary, and the
    source's boxes with label names (:func:`chexnet.data.sources.box_findings`; None: the source has none)."""
    plan = sources.read_source(args["dataset"], Path(args["data_dir"]), view=args["view"], seed=args["seed"],
                               val_fraction=args["val_fraction"], **args.get("options", {}))
    raw_boxes = plan.attrs.pop("boxes", None)  # before any copy of the table (attrs are copied with it)
    source = {**plan.attrs["source"], "planned": len(plan)}
    labels = label_columns(plan.columns)
    label_table = plan.attrs["source"].get("label_table", args["dataset"])  # vindr: its layout's name table
    boxes = None if raw_boxes is None else sources.box_findings(label_table, raw_boxes, labels)
    plan = plan[[*index_columns(labels), "path"]].reset_index(drop=True)
    plan.attrs = {}
    return plan, source, boxes


def _plan_digest(plan: pd.DataFrame) -> str:
    return hashlib.sha256(plan.to_csv(index=False).encode()).hexdigest()


# =========================================================================== work area


class _Work:
    """The ``CACHE/work`` folder of one prepare: row status, failures and the part file."""

    def __init__(self, root: Path, rows: int, size: int):
        self.root, self.rows, self.size = root, rows, size
        self.plan_json = root / "plan.json"
        self.part = root / (IMAGES + ".part")
        self.status_path = root / "status.u8"
        self.failed_path = root / "failed.json"
        self.status = np.zeros(rows, dtype=np.uint8)
        self.failures: dict[int, dict] = {}
        self.failures_changed = True  # failed.json needs rewriting
        self.started = ""
        self.runs = 0

    @property
    def row_bytes(self) -> int:
        return self.size * self.size

    def create(self, args: dict, plan: pd.DataFrame) -> None:
        """Create a fresh work area; ``plan.json`` is written last and marks it valid."""
        _remove_tree(self.root)
        self.root.mkdir(parents=True)
        with open(self.part, "wb") as f:
            f.truncate(self.rows * self.row_bytes)  # sparse until written
        dataset = args.get("dataset", "nih")
        reason = ("file not found in images_*/images/ or images/" if dataset == "nih" else
                  f"file not found where the {dataset} layout keeps it (chexnet prepare --help)")
        for row in np.flatnonzero(plan["path"].to_numpy() == ""):
            self.status[row] = FAILED
            self.failures[int(row)] = {"row": int(row), "image": plan["image"].iat[row], "path": "", "reason": reason}
        self.save_state()
        self.started = _now()
        self.runs = 1
        self.save_plan_json(args, _plan_digest(plan))

    def save_plan_json(self, args: dict, plan_sha256: str) -> None:
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "arguments": args, "rows": self.rows,
                "plan_sha256": plan_sha256, "started": self.started, "runs": self.runs}
        atomic_write(self.plan_json, json.dumps(info, indent=2).encode())

    def load(self) -> dict:
        """Read plan.json, status and failures of an existing work area."""
        info = json.loads(self.plan_json.read_text())
        status = np.fromfile(self.status_path, dtype=np.uint8)
        if status.size != self.rows:
            raise CacheError(f"{self.status_path}: {status.size} rows, expected {self.rows}")
        self.status = status.copy()
        for item in json.loads(self.failed_path.read_text()):
            if self.status[item["row"]] == FAILED:
                self.failures[int(item["row"])] = item
        self.started, self.runs = info.get("started", ""), int(info.get("runs", 0)) + 1
        return info

    def record(self, results, plan: pd.DataFrame) -> None:
        """Take a chunk's results [(row, reason or None)] into memory (not yet durable)."""
        for row, reason in results:
            if reason is None:
                self.status[row] = DONE
            else:
                self.status[row] = FAILED
                self.failures[row] = {"row": row, "image": plan["image"].iat[row], "path": plan["path"].iat[row],
                                      "reason": reason}
                self.failures_changed = True

    def save_state(self, data_fd: int | None = None) -> None:
        """Make pixels durable (fsync), then failures, then the status flags (each replaced atomically)."""
        if data_fd is not None:
            os.fsync(data_fd)
        if self.failures_changed:  # can be long (a partial download misses most files): only when it changed
            items = [self.failures[r] for r in sorted(self.failures)]
            atomic_write(self.failed_path, json.dumps(items, indent=1).encode())
            self.failures_changed = False
        atomic_write(self.status_path, self.status.tobytes())


def _open_work(out_dir: Path, args: dict, plan: pd.DataFrame, say) -> _Work:
    """Resume the work area if it matches ``args`` and ``plan``, create it if absent, else refuse."""
    work = _Work(out_dir / WORK, len(plan), args["size"])
    if not work.plan_json.is_file():  # absent, or killed while being created
        work.create(args, plan)
        return work
    info = json.loads(work.plan_json.read_text())
    stale = _differences(info.get("arguments", {}), args)
    digest = _plan_digest(plan)  # serializes the whole plan: once per run
    if not stale and info.get("plan_sha256") != digest:
        stale = "the metadata, split lists or image files changed"
    if stale:
        raise CacheError(f"{out_dir} holds an interrupted prepare with other inputs ({stale}); "
                         "re-run with the same arguments to finish it, or use --overwrite to start over")
    work.load()
    if not work.part.is_file() and not _part_already_moved(out_dir, work):
        raise CacheError(f"{work.part} is missing; re-run with --overwrite to start over")
    if work.part.is_file() and work.part.stat().st_size != work.rows * work.row_bytes:
        raise CacheError(f"{work.part}: size {work.part.stat().st_size}, expected {work.rows * work.row_bytes}; "
                         "re-run with --overwrite to start over")
    work.save_plan_json(args, digest)  # counts this run
    finished = int((work.status != PENDING).sum())
    say(f"{out_dir}: resuming an interrupted prepare: {finished} of {work.rows} images already done")
    return work


def _part_already_moved(out_dir: Path, work: _Work) -> bool:
    """True if finalization already renamed the part file to images.u8 (all rows done) before a kill."""
    images = out_dir / IMAGES
    n_done = int((work.status == DONE).sum())
    return (not (work.status == PENDING).any() and n_done == work.rows and images.is_file()
            and images.stat().st_size == work.rows * work.row_bytes)


# =========================================================================== running


def _run(work: _Work, plan: pd.DataFrame, size: int, workers: int, progress: bool) -> int:
    """Process every pending row, committing progress every COMMIT_SECONDS and on any exit.

    Returns the number of rows processed by this call.
    """
    pending = np.flatnonzero(work.status == PENDING)
    if pending.size == 0:
        return 0
    paths = plan["path"].to_numpy()
    per_chunk = max(1, min(MAX_CHUNK, math.ceil(pending.size / (workers * 4))))
    chunks = [[(int(r), paths[r]) for r in pending[i:i + per_chunk]] for i in range(0, pending.size, per_chunk)]
    workers = min(workers, len(chunks))
    fd = os.open(work.part, os.O_RDWR | _O_BINARY)
    last_commit = time.monotonic()
    try:
        if workers == 1:
            results = (_process_chunk(chunk, size, str(work.part)) for chunk in chunks)
            _consume(results, work, plan, fd, progress, last_commit)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                pool.submit(int).result()  # start (fork) the workers now, before tqdm starts a thread
                _consume(_pool_results(pool, chunks, size, str(work.part), workers), work, plan, fd, progress,
                         last_commit)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            work.save_state(fd)  # keep everything that finished
        if is_disk_full(exc):
            left = int((work.status == PENDING).sum()) * work.row_bytes
            raise disk_full(work.part, left) from None  # "needs": the pending rows' pixels
        if isinstance(exc, (KeyboardInterrupt, OSError)) or type(exc).__name__ == "BrokenProcessPool":
            print(f"prepare stopped ({type(exc).__name__}: {exc}); finished rows are saved: "
                  "re-run the same command to resume", file=sys.stderr)
        raise
    finally:
        _close_worker_fds()
        os.close(fd)
    return int(pending.size)


def _check_space(work: _Work) -> None:
    """Refuse to start when the pending rows' pixels (the part file is sparse: what it has not yet allocated) and
    the work area's small files would not fit, rather than failing hours in."""
    pending = int((work.status == PENDING).sum()) * work.row_bytes
    if not pending or not work.part.is_file():  # nothing left, or finalization already renamed the part file
        return
    allocated = getattr(os.stat(work.part), "st_blocks", 0) * 512
    needed = max(0, min(pending, work.rows * work.row_bytes - allocated)) + 2 * work.rows + (1 << 20)
    check_free_space(work.part, needed, f"caching {int((work.status == PENDING).sum())} more images")


def _consume(results, work: _Work, plan: pd.DataFrame, fd: int, progress: bool, last_commit: float) -> None:
    from tqdm import tqdm

    done_before = int((work.status != PENDING).sum())
    with tqdm(total=work.rows, initial=done_before, unit="img", desc="prepare", disable=not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        for chunk_results in results:
            work.record(chunk_results, plan)
            bar.update(len(chunk_results))
            if time.monotonic() - last_commit >= COMMIT_SECONDS:
                work.save_state(fd)
                last_commit = time.monotonic()
    work.save_state(fd)


def _pool_results(pool: ProcessPoolExecutor, chunks: list, size: int, part: str, workers: int):
    """Yield chunk results as they finish, keeping at most 2 chunks per worker in flight."""
    todo = iter(chunks)
    inflight: set = set()
    try:
        while True:
            while len(inflight) < 2 * workers:
                chunk = next(todo, None)
                if chunk is None:
                    break
                inflight.add(pool.submit(_process_chunk, chunk, size, part))
            if not inflight:
                return
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in inflight:
            future.cancel()


_WORKER_FDS: dict[str, int] = {}
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _process_chunk(chunk: list, size: int, part: str) -> list:
    """Decode, resize and write rows ``[(row, path), ...]`` into the part file; return [(row, reason|None)].

    Image errors are returned as reasons; write errors (disk full) propagate and stop the run.
    """
    fd = _WORKER_FDS.get(part)
    if fd is None:
        fd = _WORKER_FDS[part] = os.open(part, os.O_WRONLY | _O_BINARY)
    row_bytes = size * size
    out = []
    for row, path in chunk:
        try:
            pixels = read_cache_row(path, size).tobytes()
        except ImageReadError as exc:
            out.append((row, exc.reason))
            continue
        except Exception as exc:  # a decoder bug must not stop a 100k-image run
            out.append((row, f"{type(exc).__name__}: {exc}"))
            continue
        written = _write_at(fd, pixels, row * row_bytes)
        if written != row_bytes:
            raise OSError(f"{part}: short write at row {row} ({written} of {row_bytes} bytes)")
        out.append((row, None))
    return out


def _write_at(fd: int, data: bytes, offset: int) -> int:
    """pwrite where the OS has it; otherwise seek + write (each process has its own descriptor)."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.write(fd, data)


def _close_worker_fds() -> None:
    while _WORKER_FDS:
        os.close(_WORKER_FDS.popitem()[1])


# =========================================================================== finalization


def _finalize(out_dir: Path, work: _Work, plan: pd.DataFrame, args: dict, source: dict, workers: int,
              boxes: pd.DataFrame | None = None) -> dict:
    """Write images.u8 (done rows only), index.csv, boxes.csv (with ``boxes``), then meta.json; delete the work
    area."""
    ok = work.status == DONE
    if not ok.any():
        first = "; ".join(f"{f['image']}: {f['reason']}" for f in list(work.failures.values())[:3])
        raise CacheError(f"none of the {work.rows} images could be read (e.g. {first}); nothing cached")
    labels = label_columns(plan.columns)
    index = plan.loc[ok, index_columns(labels)].reset_index(drop=True)
    check_patient_disjoint(index["patient_id"], index["split"])
    atomic_write(out_dir / INDEX, index_csv_text(index, labels).encode())
    _write_images(out_dir / IMAGES, work, ok)
    box_summary = _write_boxes(out_dir / BOXES, boxes, plan, ok)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "size": args["size"],
        "count": int(ok.sum()),
        "shape": [int(ok.sum()), args["size"], args["size"]],
        "dtype": "uint8",
        "files": {"images": IMAGES, "index": INDEX, **({"boxes": BOXES} if box_summary is not None else {})},
        "labels": labels,
        "label_counts": label_counts(index, labels),
        "arguments": args,
        "source": source,
        "splits": split_counts(index),
        "failed_count": len(work.failures),
        "failed": [work.failures[r] for r in sorted(work.failures)],
        **({"boxes": box_summary} if box_summary is not None else {}),
        "created": {
            "started": work.started,
            "finished": _now(),
            "runs": work.runs,
            "workers": workers,
            "versions": {**library_versions("numpy", "pandas", "pillow", "pydicom"), "platform": platform.platform()},
        },
    }
    count, size = int(ok.sum()), args["size"]  # each row's digest, for prepare --verify (cache.verify_cache)
    images = np.memmap(out_dir / IMAGES, dtype=np.uint8, mode="r", shape=(count, size, size))
    atomic_write(out_dir / DIGESTS, row_digests(images).tobytes())
    del images
    meta["digests"] = digests_record(out_dir)
    atomic_write(out_dir / META, (json.dumps(meta, indent=2) + "\n").encode())
    _remove_tree(work.root)
    return meta


def _write_images(dest: Path, work: _Work, ok: np.ndarray) -> None:
    """Rename the part file if every row is done; otherwise copy the done rows in order."""
    if not work.part.is_file():  # renamed by a finalization that was killed before meta.json
        return
    if ok.all():
        os.replace(work.part, dest)
        return
    tmp = dest.with_name(dest.name + ".tmp")
    needed = int(ok.sum()) * work.row_bytes
    check_free_space(dest, needed, "copying the cached images without the failed ones")
    src = np.memmap(work.part, dtype=np.uint8, mode="r", shape=(work.rows, work.size, work.size))
    block = max(1, (64 << 20) // work.row_bytes)
    try:
        with open(tmp, "wb") as f:
            for start, stop in _runs(ok):
                for a in range(start, stop, block):
                    f.write(src[a:min(stop, a + block)].tobytes())
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(dest, needed) from None
        raise
    del src
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _write_boxes(dest: Path, boxes: pd.DataFrame | None, plan: pd.DataFrame, ok: np.ndarray) -> dict | None:
    """Write ``boxes.csv`` (see :mod:`chexnet.data.cache`): the boxes of the cached images, with each image's
    original (height, width) read from its file's header, once per image; return meta.json's ``boxes`` block.
    Without boxes (the source has none) remove a stale file instead and return None."""
    if boxes is None:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        return None
    paths = dict(zip(plan.loc[ok, "image"], plan.loc[ok, "path"]))
    cached = boxes["image"].isin(set(paths)).to_numpy()
    sizes, unreadable = {}, []
    for image in dict.fromkeys(boxes.loc[cached, "image"]):
        try:
            sizes[image] = read_image_size(paths[image])
        except ImageReadError as exc:  # decoded a moment ago: changed or removed since
            unreadable.append(f"{image}: {exc.reason}")
    sized = cached & boxes["image"].isin(set(sizes)).to_numpy()
    out = boxes.loc[sized].reset_index(drop=True)
    out["height"] = np.array([sizes[n][0] for n in out["image"]], dtype=np.int64)
    out["width"] = np.array([sizes[n][1] for n in out["image"]], dtype=np.int64)
    atomic_write(dest, out[BOX_COLUMNS].to_csv(index=False).encode())
    return {"count": len(out), "images": int(out["image"].nunique()),
            "findings": {str(k): int(v) for k, v in out["finding"].value_counts(sort=False).items()},
            "not_cached": int((~cached).sum()), "dropped": int(boxes.attrs.get("dropped", 0)),
            "size_unreadable": int((cached & ~sized).sum()), "size_errors": unreadable[:SUMMARY_FAILURES]}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def index_csv_text(index: pd.DataFrame, labels: list[str]) -> str:
    """index.csv's text: labels as 1 / 0 / an empty cell (missing)."""
    out = index.copy()
    for name in labels:
        if out[name].dtype.kind == "f":
            out[name] = out[name].astype("Int8")  # NaN -> <NA>, written as an empty cell
    return out.to_csv(index=False)


def label_counts(index: pd.DataFrame, labels: list[str]) -> dict:
    """{split: {label: {positive, negative, missing}}}."""
    counts = {}
    for s in SPLITS:
        part = index.loc[index["split"] == s, labels].to_numpy(np.float64)
        counts[s] = {name: {"positive": int((part[:, j] == 1).sum()), "negative": int((part[:, j] == 0).sum()),
                            "missing": int(np.isnan(part[:, j]).sum())} for j, name in enumerate(labels)}
    return counts


def split_counts(index: pd.DataFrame) -> dict:
    return {s: {"images": int((index["split"] == s).sum()),
                "patients": int(index.loc[index["split"] == s, "patient_id"].nunique())} for s in SPLITS}


def _print_summary(meta: dict, out_dir: Path, say, processed: int, seconds: float, workers: int) -> None:
    s = meta["size"]
    gb = meta["count"] * s * s / 1e9
    volume = f"{gb:.2f} GB" if gb >= 1 else f"{gb * 1000:.1f} MB"
    rate = processed / seconds if seconds > 0 else 0.0
    say(f"processed {processed} images in {seconds:.1f} s ({rate:.1f} img/s, {workers} worker(s))")
    say(f"cache {out_dir}: {meta['count']} images of {s}x{s} ({volume}), split mode {meta['source']['split_mode']}")
    for name, c in meta["splits"].items():
        say(f"  {name:5s} {c['images']:7d} images  {c['patients']:6d} patients")
    say("labels (positive / negative / missing per split):")
    width = max(len(n) for n in meta["labels"])
    for label in meta["labels"]:
        cells = [f"{s} {c[label]['positive']}/{c[label]['negative']}/{c[label]['missing']}"
                 for s, c in meta["label_counts"].items()]
        say(f"  {label:{width}s}  " + "   ".join(cells))
    if "boxes" in meta:
        b = meta["boxes"]
        left = [f"{b[k]} {why}" for k, why in (("not_cached", "of images not cached"), ("dropped", "of findings "
                "without a label"), ("size_unreadable", "of images whose size was unreadable")) if b[k]]
        say(f"boxes: {b['count']} on {b['images']} images in {out_dir / BOXES}"
            + (f" (left out: {', '.join(left)})" if left else ""))
    if meta["failed"]:
        missing = sum(1 for f in meta["failed"] if not f["path"])
        also = f", {missing} of them not found on disk" if missing else ""
        say(f"{meta['failed_count']} image(s) failed and were left out{also} (all listed in {out_dir / META}):")
        for f in meta["failed"][:SUMMARY_FAILURES]:
            say(f"  {f['image']}: {f['reason']}")
        if meta["failed_count"] > SUMMARY_FAILURES:
            say(f"  ... and {meta['failed_count'] - SUMMARY_FAILURES} more")


# =========================================================================== file helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _printer(enabled: bool):
    if enabled:
        return lambda msg: print(msg, flush=True)
    return lambda msg: None


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _remove_cache(out_dir: Path) -> None:
    """Delete this module's files only (meta.json first, so a crash leaves an 'incomplete' cache)."""
    leftovers = [p.name for name in (META, INDEX, BOXES, DIGESTS) for p in out_dir.glob(f".{name}.*.tmp")]  # temps
    for name in (META, INDEX, BOXES, DIGESTS, IMAGES, IMAGES + ".tmp", *leftovers):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    _remove_tree(out_dir / WORK)


@contextlib.contextmanager
def _locked(out_dir: Path):
    """Hold an exclusive lock on ``out_dir/.lock`` (where fcntl exists) so two prepares cannot collide."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(out_dir / LOCK, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CacheError(f"{out_dir}: another chexnet prepare is writing this cache") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
