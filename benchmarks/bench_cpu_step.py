"""The bare CPU training step: fp32 vs bf16 autocast, NCHW vs channels-last, with an optional profile.

One torchvision model, random data in memory, forward + BCE + backward + optimizer step, alternating the
configurations so that a shared VM's drift hits them alike. Prints s/step and img/s per configuration and round,
and with ``--profile`` the top operators of one bf16 step (torch.profiler, by self CPU time) in the last layout.
Check which oneDNN kernels run with ``ONEDNN_VERBOSE=1`` (``avx512_core_bf16``, ``avx512_core_amx_bf16``).

    python benchmarks/bench_cpu_step.py --arch densenet121 --size 224 --batch 16 --rounds 2 --profile
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision

from bench_common import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="densenet121", help="a torchvision classification model")
    ap.add_argument("--size", type=int, default=224, help="input pixels")
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of all configurations")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--layouts", default="nchw,channels_last", help="comma-separated: nchw, channels_last")
    ap.add_argument("--profile", action="store_true", help="also profile one bf16 step")
    ap.add_argument("--json", default=None, help="write every number here")
    args = ap.parse_args()
    torch.manual_seed(0)
    y = (torch.rand(args.batch, 14) < 0.2).float()
    models = {}
    for layout in args.layouts.split(","):
        m = getattr(torchvision.models, args.arch)(num_classes=14)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)
        models[layout] = (m.to(memory_format=fmt), torch.optim.Adam(m.parameters(), 1e-3), x)

    def step(layout, precision):
        m, opt, x = models[layout]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    result = {"machine": machine(torch=torch.__version__, threads=torch.get_num_threads()), "args": vars(args),
              "runs": []}
    for r in range(args.rounds):
        for layout in models:
            for precision in args.precisions.split(","):
                step(layout, precision)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(layout, precision)
                s = (time.perf_counter() - t0) / args.steps
                result["runs"].append({"round": r + 1, "layout": layout, "precision": precision, "s_per_step": s,
                                       "img_per_s": args.batch / s})
                print(f"round {r + 1} {args.arch} {args.size}px b{args.batch} {layout} {precision}: {s:.3f} s/step "
                      f"{args.batch / s:.1f} img/s", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        layout = list(models)[-1]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(layout, "bf16")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40)
        print(f"bf16 {layout} step, top operators by self CPU time:\n{table}")
        result["profile"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
