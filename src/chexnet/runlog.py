"""Run logging on rank 0: ``RUN/metrics.jsonl`` (one JSON record per line) and TensorBoard when installed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from chexnet.fileio import atomic_write, disk_full, is_disk_full


class RunLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import (
                    SummaryWriter,  # needs the tensorboard package
                )

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed: JSON lines only
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records past the checkpoint's global ``step`` (they will be logged again)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(self.path, "".join(line + "\n" for line in keep))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        line = json.dumps(clean) + "\n"
        try:
            with self.path.open("a") as f:
                f.write(line)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(self.path, len(line)) from None
            raise
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "time"):
                    self.tb.add_scalar(f"{record.get('kind', 'x')}/{k}", v, step)
            for k, v in record.get("auroc", {}).items() if isinstance(record.get("auroc"), dict) else []:
                if v is not None:
                    self.tb.add_scalar(f"val_auroc/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
