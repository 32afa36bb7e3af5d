"""metrics.jsonl: records written by rank 0, trimmed on resume so redone steps are not logged twice."""

from chexnet.runlog import RunLogger, read_metrics


def test_log_and_truncate_after(tmp_path):
    log = RunLogger(tmp_path)
    for step in (5, 10, 15):
        log.log({"kind": "train", "step": step, "loss": float("nan") if step == 15 else 0.5})
    log.log({"kind": "epoch", "step": 15, "epoch": 1})
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 15, 15]
    assert read_metrics(tmp_path)[2]["loss"] is None  # NaN is written as null: the file stays strict JSON
    log.truncate_after(10)
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10]
    log.close()


def test_disabled_logger_writes_nothing(tmp_path):
    log = RunLogger(tmp_path, enabled=False)
    log.log({"kind": "train", "step": 1})
    log.truncate_after(0)
    assert not (tmp_path / "metrics.jsonl").exists()

