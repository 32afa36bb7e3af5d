"""The Spark launcher's driver-side decisions, without starting Spark (tests/multiproc/test_spark.py runs it for real)."""

from __future__ import annotations

import pytest

from chexnet import cli
from chexnet.launch import spark


def test_parse_conf():
    assert spark.parse_conf(["spark.task.cpus=4", "spark.driver.extraJavaOptions=-Xmx2g -Dx=y"]) == {
        "spark.task.cpus": "4", "spark.driver.extraJavaOptions": "-Xmx2g -Dx=y"}
    with pytest.raises(ValueError, match="--spark-conf 'spark.task.cpus': expected KEY=VALUE"):
        spark.parse_conf(["spark.task.cpus"])


@pytest.mark.parametrize("conf,gpu", [
    ({}, False),
    ({"spark.task.resource.gpu.amount": "1"}, True),
    ({"spark.task.resource.gpu.amount": "2", "spark.executor.resource.gpu.amount": "8"}, True),
    ({"spark.task.resource.gpu.amount": "0"}, False),
])
def test_gpu_use_follows_the_task_gpu_amount(conf, gpu):
    assert spark.use_gpus(conf.get) is gpu


def test_executor_gpus_without_task_gpus_warn(capsys):
    assert spark.use_gpus({"spark.executor.resource.gpu.amount": "4"}.get) is False
    assert "spark.task.resource.gpu.amount=1" in capsys.readouterr().err


def test_fractional_gpus_per_task_are_refused():
    with pytest.raises(ValueError, match="whole GPUs per task"):
        spark.use_gpus({"spark.task.resource.gpu.amount": "0.5"}.get)


@pytest.mark.parametrize("master,slots", [("local", 1), ("local[2]", 2), ("local[3,2]", 3), ("yarn", None),
                                          ("spark://h:7077", None), (None, None)])
def test_local_slots(master, slots):
    assert spark.local_slots(master) == slots


@pytest.mark.parametrize("extra,message", [
    (["--spark-master", "local[2]"], "--spark-master and --spark-conf go with --launcher spark"),
    (["--launcher", "spark", "--max-restarts", "2"], "Spark retries a failed barrier stage itself"),
])
def test_launcher_options_are_checked(tmp_path, capsys, extra, message):
    rc = cli.main(["train", "--cache", str(tmp_path), "--out", str(tmp_path / "r"), *extra])
    assert rc == 2 and message in capsys.readouterr().err


def test_worker_command_line_drops_the_launchers_options():
    args = cli.build_parser().parse_args(["train", "--cache", "c", "--out", "o"])
    args.argv = ["train", "--cache", "c", "--launcher", "spark", "--spark-master", "spark://h:7077", "--nproc", "4",
                 "--spark-conf", "a=1", "--spark-conf=b=2", "--out", "o", "--epochs", "3"]
    from chexnet.cli.processes import worker_argv

    assert worker_argv(args) == ["train", "--cache", "c", "--out", "o", "--epochs", "3"]
