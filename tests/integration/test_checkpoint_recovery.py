"""A damaged last.pt is not the end of a run: --resume auto names it and continues from the one before; evaluate
names a damaged checkpoint and refuses a swapped one unless --trust-changed."""

from __future__ import annotations

import json
import shutil

import torch

from tests.helpers import tiny_train_args


def test_resume_auto_steps_over_a_damaged_last_pt_and_evaluate_names_what_is_wrong(tiny_cache, tmp_path,
                                                                                   chexnet_main):
    run = tmp_path / "run"
    chexnet_main(*tiny_train_args(tiny_cache, run, epochs=2))
    ckpts = run / "checkpoints"
    shutil.copyfile(ckpts / "last.pt", tmp_path / "epoch2.pt")
    data = (ckpts / "last.pt").read_bytes()
    (ckpts / "last.pt").write_bytes(data[: len(data) // 3])  # a copy gone wrong

    proc = chexnet_main("evaluate", run, "--checkpoint", "last", "--bootstrap", "10", check=False)
    assert proc.returncode == 2 and "last.pt: checkpoint truncated" in proc.stderr and "Traceback" not in proc.stderr

    proc = chexnet_main(*tiny_train_args(tiny_cache, run, epochs=3), "--resume", "auto")
    assert "last.pt: checkpoint truncated" in proc.stderr and "continuing from" in proc.stderr
    assert "last.prev.pt (epoch 1" in proc.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "epoch"]
    assert epochs == [1, 2, 3]  # epoch 2 again from epoch 1's state (the damaged one's records replaced), then 3

    state = torch.load(tmp_path / "epoch2.pt", weights_only=True)
    state["epoch"] = 99  # a valid checkpoint that training never wrote: a swapped file
    torch.save(state, ckpts / "best.pt")
    proc = chexnet_main("evaluate", run, "--bootstrap", "10", check=False)
    assert proc.returncode == 2 and "best.pt: changed since chexnet wrote it" in proc.stderr
    chexnet_main("evaluate", run, "--bootstrap", "10", "--trust-changed", "--no-plots")
