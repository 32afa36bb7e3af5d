"""Checkpoints and the run-directory layout.

A run directory is self-describing::

    RUN/config.yaml          resolved training config (the recipe + overrides)
    RUN/run.json             cache path, label order, world size, library versions, command line
    RUN/metrics.jsonl        one JSON record per logged step / evaluation
    RUN/checkpoints/last.pt  newest complete state (every epoch and every --checkpoint-every steps)
    RUN/checkpoints/best.pt  highest validation mean AUROC
    RUN/eval/<split>/        written by ``chexnet evaluate``

Checkpoints are written by rank 0 only, atomically (temp file in the same folder, flush, fsync, rename,
fsync of the folder): a kill mid-write leaves the previous file intact. They are loaded with
``weights_only=True``, so only tensors and plain containers are stored (no pickled objects).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from chexnet.environment import library_versions
from chexnet.fileio import atomic_write


def versions() -> dict[str, str]:
    return library_versions("torch", "torchvision", "numpy")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot load checkpoint ({exc})") from exc


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


def checkpoint_dir(run: str | os.PathLike) -> Path:
    return Path(run) / "checkpoints"


def resolve_checkpoint(run: str | os.PathLike, which: str = "best") -> Path:
    """``best`` | ``last`` | a path. A run without that checkpoint is a clear error."""
    if which in ("best", "last"):
        path = checkpoint_dir(run) / f"{which}.pt"
        if not path.is_file() and which == "best" and (checkpoint_dir(run) / "last.pt").is_file():
            path = checkpoint_dir(run) / "last.pt"  # no validation yet: the newest state is the best we have
        if not path.is_file():
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
