"""``chexnet train --launcher spark`` on a ``local[2]`` Spark master: TorchDistributor runs the training in two
barrier tasks (issue 9). The run must be the one ``chexnet train --nproc 2`` makes with the same seed: the same
per-epoch metrics to 1e-6, one rank-0 writer, a checkpoint of a 2-process group.

Needs pyspark and pyarrow >= 18 (``pip install 'chexnet[spark]'``) and Java; skips, saying which, without them.
All Spark traffic stays on loopback (SPARK_LOCAL_IP=127.0.0.1). The JVM options only shorten Spark's start-up.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from chexnet.checkpoint import load_checkpoint
from chexnet.runlog import read_metrics
from tests.helpers import LAUNCHER_RUN, assert_same_epochs, final_sums, subprocess_env, tiny_train_args

FAST_JVM = ["--spark-conf", "spark.ui.enabled=false",
            "--spark-conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"]


def _why_no_spark() -> str | None:
    try:
        import pyarrow
        import pyspark  # noqa: F401
    except ImportError as exc:
        return f"pyspark / pyarrow not installed (pip install 'chexnet[spark]'): {exc}"
    if int(pyarrow.__version__.split(".")[0]) < 18:
        return f"TorchDistributor needs pyarrow >= 18, found {pyarrow.__version__}"
    if shutil.which("java") is None:
        return "java not found: Spark needs a JRE (Debian: apt-get install openjdk-17-jre-headless)"
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_spark_local_2_trains_like_nproc_2(tiny_cache, tmp_path, reference_run):
    reason = _why_no_spark()
    if reason:
        pytest.skip(reason)
    run = tmp_path / "run"
    env = subprocess_env(SPARK_LOCAL_IP="127.0.0.1")
    env.pop("PYSPARK_PYTHON", None)  # the launcher points executors at its own interpreter, and says so
    env.pop("PYSPARK_DRIVER_PYTHON", None)
    cmd = [sys.executable, "-m", "chexnet", *tiny_train_args(tiny_cache, run, **LAUNCHER_RUN),
           "--launcher", "spark", "--spark-master", "local[2]", "--nproc", "2", *FAST_JVM]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{output[-6000:]}"
    assert f"executors will run {sys.executable}" in output
    assert "barrier tasks" in output and "(CPUs, gloo)" in output

    info = json.loads((run / "run.json").read_text())
    assert (info["launcher"], info["world_size"]) == ("torchrun", 2)  # TorchDistributor starts torchrun per task
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["world_size"]) == (2, 2), "one 2-process group wrote the checkpoint"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]
    assert [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"] == [1, 2], "each epoch recorded once"
    assert_same_epochs(run, reference_run)
    sums = final_sums(output)
    assert sorted(sums) == [0, 1] and len(set(sums.values())) == 1, "both Spark tasks' ranks ended with the same weights"


def test_spark_launcher_refuses_more_processes_than_local_slots(tiny_cache, tmp_path, train_args, chexnet_cli):
    """Barrier tasks must all run at once: local[1] cannot hold 2 (said before Spark starts, not after minutes)."""
    reason = _why_no_spark()
    if reason and "java" not in reason:
        pytest.skip(reason)
    proc = chexnet_cli(*train_args(tiny_cache, tmp_path / "run"), "--launcher", "spark", "--spark-master", "local[1]",
                       "--nproc", "2", check=False, timeout=120)
    assert proc.returncode == 2
    assert "--nproc 2 x spark.task.cpus 1 needs 2 task slots" in proc.stderr and "local[1] has 1" in proc.stderr
