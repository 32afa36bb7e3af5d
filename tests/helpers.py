"""Plain helpers shared by the tests (fixtures are in tests/conftest.py): the tiny training config, a free
port, the environment of a chexnet subprocess, training arguments, torch's thread count for a block, the
comparisons of runs that every launcher must reproduce, and a benchmark script loaded as a module."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import re
import socket
from pathlib import Path

import numpy as np
import pytest

TINY = dict(arch="mobilenet_v3_small", weights="none", input_size=32, batch_size=4, epochs=1, workers=0,
            max_steps_per_epoch=3, log_every=1, lr=1e-3, lr_reference_batch=4, seed=0)



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` for the block, then restored: on 2 shared cores, extra threads
    per process mostly contend (session fixtures use this; tests use the ``one_thread`` fixture)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
              "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "CHEXNET_DEBUG"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if env.get("PYTHONPATH"):  # absolute, so that children started in other folders (Spark, namespaces) see the same code
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def tiny_train_args(cache, out, **overrides) -> list[str]:
    """``chexnet train`` arguments for the tiny config (flags for every TINY field)."""
    values = {**TINY, **overrides}
    args = ["train", "--cache", str(cache), "--out", str(out), "--no-progress"]
    for k, v in values.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


# ------------------------------------------------------------- the same training under every launcher (issue 9)

LAUNCHER_RUN = dict(epochs=2)  # the tiny config for two epochs: what mpirun, two hosts and Spark train


def epoch_metrics(run: Path) -> list[dict]:
    """The per-epoch records of ``run`` without wall-clock fields (time, img/s): what equal training gives equal."""
    from chexnet.runlog import read_metrics

    drop = ("time", "img_per_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(run) if r["kind"] == "epoch"]


def assert_same_epochs(run: Path, reference: Path, tol: float = 1e-6) -> None:
    """Every per-epoch number of ``run`` equals ``reference``'s to ``tol`` (losses, lr, per-class AUROC)."""
    got, want = epoch_metrics(run), epoch_metrics(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want], (got, want)

    def flat(record, prefix=""):
        for k, v in record.items():
            if isinstance(v, dict):
                yield from flat(v, prefix + k + ".")
            else:
                yield prefix + k, v

    for g, w in zip(got, want):
        g, w = dict(flat(g)), dict(flat(w))
        assert g.keys() == w.keys()
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=0, abs=tol), f"epoch {w['epoch']}: {k}"
            else:
                assert g[k] == w[k], f"epoch {w['epoch']}: {k}"


def final_sums(text: str) -> dict[int, str]:
    """{rank: checksum} from training's per-rank "final weights sha256" lines (a rank of a 1-process group names
    no host)."""
    return {int(r): s for r, s in re.findall(r"rank (\d+)/\d+(?: \([^)]*\))?: final weights sha256 ([0-9a-f]{64})", text)}


# ------------------------------------------------------------- CheXpert's real metadata with generated images

CHEXPERT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "chexpert" / "train.csv.gz"


def make_chexpert_folder(root: Path, size: int = 40) -> Path:
    """A CheXpert v1.0 small download in ``root`` made of real rows of its train.csv (``CHEXPERT_CSV``, the
    project's shared data): whole patients from the first 600 rows as ``train.csv`` (about 300 rows, laterals
    included), 40 rows of 12 other patients renamed into ``valid/`` as ``valid.csv``, and a generated JPEG of
    ``size`` px at every path. Returns ``root`` (it holds ``CheXpert-v1.0-small/``)."""
    import gzip
    import io

    import pandas as pd
    from PIL import Image

    from tests.conftest import xray_like

    with gzip.open(CHEXPERT_CSV, "rt") as f:
        raw = pd.read_csv(io.StringIO("".join(next(f) for _ in range(600))), dtype=str, keep_default_na=False)
    patients = raw["Path"].str.extract(r"(patient\d+)")[0]
    first = patients.unique()
    train = raw[patients.isin(first[:-12])].head(300)
    train = raw[patients.isin(patients[train.index].unique())]  # whole patients
    valid = raw[patients.isin(first[-12:]) & ~patients.isin(patients[train.index])].head(40).copy()
    valid["Path"] = valid["Path"].str.replace("/train/", "/valid/", regex=False)
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True)
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    rng = np.random.default_rng(0)
    for path in pd.concat([train, valid])["Path"]:
        dest = root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray_like(rng, size)).save(dest, quality=90)
    return root


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package), with benchmarks/ on sys.path while it loads
    so that its ``from bench_common import ...`` resolves."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(folder))
