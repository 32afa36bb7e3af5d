"""Checkpoints and the run-directory layout.

A run directory is self-describing::

    RUN/config.yaml          resolved training config (the recipe + overrides)
    RUN/run.json             cache path, label order, world size, library versions, command line;
                             ``checkpoints``: the SHA-256 digests of the checkpoints written (below)
    RUN/metrics.jsonl        one JSON record per logged step / evaluation, by ``kind``: ``train`` (a window of
                             steps: loss, lr, img/s), ``epoch`` (train and validation metrics), ``weights`` (the
                             ranks' weight digests), ``compile`` (with --compile: the first step's seconds)
    RUN/checkpoints/last.pt  newest complete state (every epoch and every --checkpoint-every steps)
    RUN/checkpoints/last.prev.pt  the last.pt before it (kept so that a damaged last.pt is not the end)
    RUN/checkpoints/best.pt  the best validation epoch under the run's ``select`` rule (lowest validation loss
                             by default, as the CheXNet paper; or highest validation mean AUROC)
    RUN/eval/<split>/        written by ``chexnet evaluate``

Checkpoints are written by rank 0 only, atomically (temp file in the same folder, flush, fsync, rename,
fsync of the folder): a kill mid-write leaves the previous file intact. They are loaded with
``weights_only=True``, so only tensors and plain containers are stored (no pickled objects).

Writing one (:meth:`CheckpointSaver.save`), in this order, so that a crash between any two steps leaves files
that load and digests that match them: the state is serialized in memory and hashed; run.json's
``checkpoints`` gets the new digest at the front of each written name's list (the previous one stays, as the
file may still be the old one: :data:`DIGEST_HISTORY` per name) and ``last.prev.pt`` the list ``last.pt`` had;
``last.pt`` is hard-linked (copied where links are not supported) to ``last.prev.pt``; then ``last.pt`` and, when
the epoch improved, ``best.pt`` are replaced atomically. run.json's entry per name: ``{"sha256": [newest, ...],
"epoch", "global_step"}``.

Reading one (:func:`load_checkpoint`): an empty file, one that is not a complete zip archive (truncated: a copy
gone wrong, a full disk) or whose members fail their CRC-32 (bits changed on disk) is a :class:`CheckpointError`
naming the file and what is wrong, never a pickle traceback. :func:`check_recorded_digest` refuses a file of the
run whose digest run.json does not list (changed since chexnet wrote it: swapped, edited, damaged) unless told
to trust it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from chexnet.choices import SELECT_RULES
from chexnet.environment import library_versions
from chexnet.fileio import atomic_write


def versions() -> dict[str, str]:
    return library_versions("torch", "torchvision", "numpy")


PREVIOUS = "last.prev.pt"
DIGEST_HISTORY = 2


class CheckpointError(RuntimeError):
    """A checkpoint that is damaged or changed since it was written; the message names the file and the fault."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def serialize(state: dict) -> bytes:
    """A checkpoint's bytes, as :func:`save_checkpoint` writes them."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_damage(path: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint file's container (None: a complete zip archive whose members pass their
    CRC-32 checks; torch.save's format is one)."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return (f"truncated or not a checkpoint ({size} bytes, no complete zip archive: a copy gone wrong, a full "
                f"disk or a disk error)")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"corrupt ({exc})"
    return f"corrupt: its member {bad} fails its CRC-32 check (bits changed on disk or in a copy)" if bad else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint (``weights_only=True``); a damaged file is a :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    damage = checkpoint_damage(path)
    if damage:
        raise CheckpointError(f"{path}: checkpoint {damage}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None


def check_recorded_digest(run: str | os.PathLike, path: str | os.PathLike, trust_changed: bool = False) -> None:
    """Refuse ``path`` (a checkpoint in ``run``'s checkpoints/ folder) when run.json records digests for its name
    and its SHA-256 is none of them, unless ``trust_changed``. Files elsewhere, and runs from before run.json
    recorded digests, are not checked."""
    path = Path(path)
    if trust_changed or path.resolve().parent != checkpoint_dir(run).resolve():
        return
    info_path = Path(run) / "run.json"
    recorded = (json.loads(info_path.read_text()).get("checkpoints") or {}) if info_path.is_file() else {}
    entry = recorded.get(path.name)
    if not entry:
        return
    digest = file_sha256(path)
    if digest not in entry["sha256"]:
        raise CheckpointError(f"{path}: changed since chexnet wrote it (sha256 {digest[:16]}..., run.json records "
                              f"{', '.join(d[:16] + '...' for d in entry['sha256'])}): a swapped, edited or damaged "
                              f"file. Pass --trust-changed to use it anyway")


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters (names, dtypes, shapes and bytes, in order): equal on every DDP rank."""
    import hashlib

    h = hashlib.sha256()
    for name, p in module.named_parameters():
        t = p.detach().to("cpu").contiguous().flatten()
        h.update(f"{name}:{t.dtype}:{tuple(p.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, optimizer, lr_ctl, scaler: torch.amp.GradScaler, cfg, spec, *, epoch: int,
                   step_in_epoch: int, global_step: int, rng_per_rank: list[dict], world_size: int) -> dict:
    """The contents of a training checkpoint (``last.pt``; :meth:`CheckpointSaver.save` adds ``selection``).

    ``model``, ``optimizer``, ``lr_ctl`` (chexnet.optim.LRController) and ``scaler`` give their state dicts (a
    disabled GradScaler's, when not fp16, is ``{}``); ``cfg`` (TrainConfig) and ``spec`` (Preprocessing) their
    dicts; ``rng_per_rank`` is every rank's :func:`rng_state`, in rank order. Read back through the ``ckpt_*``
    functions below, which hold the fallbacks for checkpoints of older versions.
    """
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr": lr_ctl.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank, "config": cfg.to_dict(), "labels": list(cfg.labels),
            "preprocessing": spec.to_dict(), "versions": versions(), "world_size": world_size}


def ckpt_world_size(ckpt: dict) -> int | None:
    """The number of processes that saved ``ckpt`` (None: saved before checkpoints recorded it)."""
    return ckpt.get("world_size")


def ckpt_selection(ckpt: dict) -> dict:
    """``{"select": rule, "best": value or None}``; checkpoints from before ``selection`` selected by AUROC."""
    return ckpt.get("selection") or {"select": "val_auroc", "best": ckpt.get("best_auroc")}


def ckpt_scaler_state(ckpt: dict) -> dict:
    """The GradScaler state; ``{}`` when the run was not fp16 (or the checkpoint has none)."""
    return ckpt.get("scaler") or {}


def ckpt_cache_size(ckpt: dict) -> int | None:
    """The cached image size (px) the checkpoint was trained on (None: not recorded)."""
    return (ckpt_preprocessing(ckpt) or {}).get("cache_size")


def ckpt_rng_state(ckpt: dict, rank: int, world_size: int) -> dict:
    """The RNG state for ``rank`` of ``world_size``: its own when the checkpoint was saved by as many ranks,
    otherwise rank 0's (also for checkpoints from before per-rank states)."""
    per_rank = ckpt.get("rng_per_rank") or []
    return per_rank[rank] if len(per_rank) == world_size else ckpt["rng"]


def ckpt_preprocessing(ckpt: dict) -> dict | None:
    """The :class:`~chexnet.preprocess.Preprocessing` dict (None: saved before checkpoints carried it)."""
    return ckpt.get("preprocessing") or None


def ckpt_position(ckpt: dict) -> tuple[int, int]:
    """(epoch, global step) of the state saved (0, 0 where a hand-made checkpoint lacks them)."""
    return int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))


def ckpt_batch_layout(ckpt: dict) -> tuple[int | None, int, int]:
    """(world size, per-rank batch size, accumulation steps) of the run that saved ``ckpt``: a mid-epoch
    position is only meaningful under the same layout."""
    return ckpt_world_size(ckpt), ckpt["config"]["batch_size"], ckpt["config"]["accum_steps"]


def checkpoint_dir(run: str | os.PathLike) -> Path:
    return Path(run) / "checkpoints"


def resolve_checkpoint(run: str | os.PathLike, which: str = "best") -> Path:
    """``best`` | ``last`` | a path. A run without that checkpoint is a clear error (``best`` never falls back
    to ``last`` silently: they are different models)."""
    if which in ("best", "last"):
        path = checkpoint_dir(run) / f"{which}.pt"
        if not path.is_file():
            if which == "best" and (checkpoint_dir(run) / "last.pt").is_file():
                raise FileNotFoundError(
                    f"{run}: no checkpoint best.pt in {checkpoint_dir(run)}: best.pt is written when a validation "
                    f"pass improves the run's selection metric, and none has (empty val split, or no epoch "
                    f"validated yet). Pass --checkpoint last to use the newest state instead")
            raise FileNotFoundError(f"{run}: no checkpoint {which}.pt in {checkpoint_dir(run)} (has the run trained an epoch?)")
        return path
    path = Path(which)
    if not path.is_file():
        raise FileNotFoundError(f"{which}: no such checkpoint")
    return path


def read_run_info(run: str | os.PathLike) -> dict:
    path = Path(run) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a chexnet run directory (no run.json)")
    return json.loads(path.read_text())


class CheckpointSaver:
    """Model selection and checkpoint writing in one place (after timm's ``CheckpointSaver``).

    ``select`` names the metric (``val_loss``: lower is better, the CheXNet paper's rule; ``val_auroc``: higher
    is better). :meth:`update` says whether a validation result is a new best; :meth:`save` writes ``last.pt``
    atomically and, when it is, ``best.pt`` too. Only the process that writes (rank 0) calls them.
    """

    def __init__(self, run: str | os.PathLike, select: str, best: float | None = None):
        if select not in SELECT_RULES:
            raise ValueError(f"select must be one of {tuple(SELECT_RULES)}, got {select!r}")
        self.dir, self.select = checkpoint_dir(run), select
        self.mode, self.rule = SELECT_RULES[select].mode, SELECT_RULES[select].text
        self.best = best if best is not None and math.isfinite(best) else (math.inf if self.mode == "min" else -math.inf)

    def is_better(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value < self.best if self.mode == "min" else value > self.best

    def update(self, value: float | None) -> bool:
        """Record a validation value; True when it is a new best (then ``best.pt`` should be written)."""
        improved = self.is_better(value)
        if improved:
            self.best = float(value)
        return improved

    def describe(self) -> str:
        return f"{self.rule} {self.best:.4f}" if math.isfinite(self.best) else f"{self.rule}: none yet"

    def state_dict(self) -> dict:
        return {"select": self.select, "best": self.best}

    def save(self, state: dict, improved: bool = False) -> None:
        """Write last.pt (keeping the one before as last.prev.pt) and, when ``improved``, best.pt, recording their
        digest in run.json first (the order of the module docstring)."""
        data = serialize({**state, "selection": self.state_dict()})
        names = ["last.pt", "best.pt"] if improved else ["last.pt"]
        _record_digests(self.dir.parent, names, hashlib.sha256(data).hexdigest(), state.get("epoch"),
                        state.get("global_step"))
        last = self.dir / "last.pt"
        if last.is_file():
            _keep_previous(last, self.dir / PREVIOUS)
        atomic_write(last, data)
        if improved:
            atomic_write(self.dir / "best.pt", data)


def _record_digests(run: Path, names: list[str], digest: str, epoch, global_step) -> None:
    """run.json's ``checkpoints``: ``digest`` first for each of ``names``; last.prev.pt takes last.pt's old list."""
    path = run / "run.json"
    if not path.is_file():  # a saver used outside a run directory (tests, tools): nothing to record
        return
    info = json.loads(path.read_text())
    recorded = info.setdefault("checkpoints", {})
    if "last.pt" in names and "last.pt" in recorded and (run / "checkpoints" / "last.pt").is_file():
        recorded[PREVIOUS] = recorded["last.pt"]
    for name in names:
        old = (recorded.get(name) or {}).get("sha256", [])
        recorded[name] = {"sha256": [digest, *[d for d in old if d != digest]][:DIGEST_HISTORY],
                          "epoch": epoch, "global_step": global_step}
    atomic_write(path, json.dumps(info, indent=2))


def _keep_previous(last: Path, previous: Path) -> None:
    """``previous`` becomes the current ``last`` (a hard link, or a copy), replaced atomically."""
    tmp = previous.with_name(f".{previous.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(last, tmp)
    os.replace(tmp, previous)
