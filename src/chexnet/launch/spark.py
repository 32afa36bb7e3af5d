"""``--launcher spark``: the same training in Spark barrier tasks, through pyspark's ``TorchDistributor``.

::

    chexnet train --launcher spark --spark-master spark://HOST:7077 --nproc 8 --cache /shared/cache --out /shared/runs/r1 ...
    chexnet train --launcher spark --spark-master yarn --nproc 8 --spark-conf spark.task.resource.gpu.amount=1 ...

``TorchDistributor(num_processes=N, local_mode=False, use_gpu=...)`` runs one barrier stage on the executors; each of
its tasks starts ``torchrun`` (static rendezvous at the first task's host, a fresh rendezvous id per launch) with one
process per task on CPUs, or one per GPU the task owns (``spark.task.resource.gpu.amount``). Every process calls
``chexnet.cli.main`` with this command's arguments minus the launcher's own, and finds RANK / WORLD_SIZE /
MASTER_ADDR as under torchrun: the training is the one ``--nproc N`` runs. This module is the driver side only;
nothing here reads launcher variables or calls torch.distributed.

Every executor needs chexnet installed in the interpreter ``PYSPARK_PYTHON`` names (set to this interpreter when
unset, which suits local masters and clusters whose nodes share one software installation), and the cache and
the run directory on storage every executor sees at the same path (rank 0 writes the run; all ranks read the
cache).
"""

from __future__ import annotations

import os
import re
import sys

# variables the ranks need that executors do not inherit from the driver on a cluster (spark.executorEnv.*)
FORWARDED_ENV = ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME",
                 "NCCL_DEBUG", "PYTHONUNBUFFERED", "CHEXNET_DEBUG")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_conf(items: list[str] | None) -> dict[str, str]:
    """``--spark-conf KEY=VALUE`` items -> dict; an item without '=' is an error naming it."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--spark-conf {item!r}: expected KEY=VALUE, e.g. spark.task.resource.gpu.amount=1")
        out[key.strip()] = value.strip()
    return out


def use_gpus(conf_get) -> bool:
    """Whether Spark gives each task GPUs (``spark.task.resource.gpu.amount`` >= 1): then TorchDistributor runs
    one process per GPU of a task, NCCL; else one process per task on its CPUs, gloo."""
    task = conf_get("spark.task.resource.gpu.amount")
    if task in (None, ""):
        executor = conf_get("spark.executor.resource.gpu.amount")
        if executor not in (None, "") and float(executor) > 0:
            _say(f"chexnet: warning: executors have GPUs (spark.executor.resource.gpu.amount={executor}) but tasks ask "
                 f"for none: training runs on CPUs. Set --spark-conf spark.task.resource.gpu.amount=1 to use them")
        return False
    amount = float(task)
    if amount > 0 and amount != int(amount):
        raise ValueError(f"spark.task.resource.gpu.amount={task}: TorchDistributor needs whole GPUs per task "
                         f"(1: one training process per GPU)")
    return amount >= 1


def local_slots(master: str | None) -> int | None:
    """Task slots of a ``local[K]`` master (None for other masters, whose size Spark knows only at run time)."""
    if master is None:
        return None
    m = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master.strip())
    if not m:
        return None
    k = m.group(1)
    return 1 if k is None else (os.cpu_count() or 1) if k == "*" else int(k)


def run(argv: list[str], nproc: int, master: str | None = None, conf: dict[str, str] | None = None) -> None:
    """Train ``chexnet ARGV`` in ``nproc`` processes on Spark's executors; raise when the Spark job fails."""
    try:
        from pyspark.ml.torch.distributor import TorchDistributor
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise RuntimeError(f"--launcher spark needs pyspark and pyarrow: pip install 'chexnet[spark]' ({exc})") from None
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: the Spark launcher needs at least 1 process")
    conf = dict(conf or {})
    if not os.environ.get("PYSPARK_PYTHON"):
        os.environ["PYSPARK_PYTHON"] = sys.executable
        _say(f"chexnet: PYSPARK_PYTHON was not set; executors will run {sys.executable} (it must exist, with "
             f"chexnet installed, on every executor host)")
    slots = local_slots(master)
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    if slots is not None and nproc * task_cpus > slots:
        raise ValueError(f"--nproc {nproc} x spark.task.cpus {task_cpus} needs {nproc * task_cpus} task slots, but "
                         f"--spark-master {master} has {slots}: barrier tasks must all run at once")

    existing = SparkSession.getActiveSession()
    builder = SparkSession.builder.appName("chexnet train")
    if master:
        builder = builder.master(master)
    for name in FORWARDED_ENV:
        if name in os.environ and f"spark.executorEnv.{name}" not in conf:
            builder = builder.config(f"spark.executorEnv.{name}", os.environ[name])
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        get = lambda key: spark.conf.get(key, None)  # noqa: E731
        gpu = use_gpus(get)
        threads = max(1, int(get("spark.task.cpus") or 1) // (int(float(get("spark.task.resource.gpu.amount") or 1))
                                                              if gpu else 1))
        _say(f"chexnet: Spark {spark.version}, master {spark.sparkContext.master}: {nproc} training process(es) in "
             f"barrier tasks on the executors ({'one per GPU, NCCL' if gpu else 'CPUs, gloo'}), {threads} thread(s) each")
        try:
            TorchDistributor(num_processes=nproc, local_mode=False, use_gpu=gpu).run(_worker, list(argv), threads)
        except Exception as exc:  # Py4J / PythonException / RuntimeError from the tasks: keep chexnet's own words
            raise RuntimeError(f"the Spark job failed: {_essence(exc)}") from exc
    finally:
        if existing is None:  # a session this launcher started
            spark.stop()


def _essence(exc: BaseException) -> str:
    """The training's own error lines out of a Spark stack trace, else its first line."""
    text = str(exc)
    own = [m.strip() for m in re.findall(r"chexnet [\w-]+: error: [^\n]*", text)]
    if own:
        return "; ".join(dict.fromkeys(own))
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first[:2000]


def _worker(argv: list[str], threads: int) -> None:
    """One training process, inside torchrun inside a Spark barrier task (pickled by reference: importable)."""
    if not os.environ.get("OMP_NUM_THREADS"):  # Spark gives the task spark.task.cpus cores
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
    from chexnet.cli import main

    rc = main(argv)
    if rc:
        raise SystemExit(rc)
