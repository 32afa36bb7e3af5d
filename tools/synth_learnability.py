"""Check that the synthetic data set is learnable: train a CNN from scratch, report per-class AUROC.

Generates a synthetic NIH-format set (or reuses one), downsamples every image once (area
interpolation), trains on the official-style train_val list and evaluates on test_list.txt
(patient-disjoint). Runs on the GPU when there is one. Examples::

    nice python tools/synth_learnability.py --images 1500 --model tiny --epochs 6      # CPU, ~3 min
    python tools/synth_learnability.py --images 3000 --model resnet18 --epochs 5

``--model resnet18`` mirrors the demo: torchvision resnet18 (no pretrained weights, 14 outputs),
gray replicated to 3 channels with ImageNet normalization, random crop + horizontal flip for
training, center crop for testing, Adam with a one-cycle schedule.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from sklearn.metrics import roc_auc_score

from chexnet.data.nih import assign_splits, find_images, read_metadata
from chexnet.data.synthetic import generate
from chexnet.labels import PATHOLOGIES


def tiny_cnn() -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 24), block(24, 48), block(48, 64), block(64, 96), block(96, 128),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(128, len(PATHOLOGIES)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/synth-learnability", help="synthetic set folder (generated if missing)")
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--size", type=int, default=256, help="size of the generated PNGs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resize", type=int, default=144, help="images are downsampled once to this size")
    ap.add_argument("--crop", type=int, default=128, help="model input: random crop (train), center crop (test)")
    ap.add_argument("--model", choices=("tiny", "resnet18"), default="tiny")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--regenerate", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = Path(args.data)
    if args.regenerate or not (data / "Data_Entry_2017.csv").exists():
        s = generate(data, images=args.images, size=args.size, seed=args.seed, progress=False)
        print(f"generated {s['images']} images, {s['patients']} patients at {args.size} px in {s['seconds']} s")
    df = read_metadata(data / "Data_Entry_2017.csv")
    split, _ = assign_splits(df, data_dir=data)
    paths = find_images(data)
    x = np.stack([np.asarray(Image.open(paths[n]).resize((args.resize, args.resize), Image.BOX)) for n in df["image"]])
    x = torch.from_numpy(x).to(device)
    y = torch.from_numpy(df[list(PATHOLOGIES)].to_numpy(np.float32)).to(device)
    train = torch.from_numpy((split != "test").to_numpy(copy=True)).to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def batch(idx, augment):
        b, c = x[idx], args.crop
        if augment:
            i, j = np.random.randint(0, args.resize - c + 1, size=2)
            b = b[:, i:i + c, j:j + c]
            if np.random.rand() < 0.5:
                b = b.flip(-1)
        else:
            o = (args.resize - c) // 2
            b = b[:, o:o + c, o:o + c]
        return (b.unsqueeze(1).float().div(255).expand(-1, 3, -1, -1) - mean) / std

    if args.model == "tiny":
        net = tiny_cnn()
    else:
        import torchvision

        net = torchvision.models.resnet18(weights=None, num_classes=len(PATHOLOGIES))
    net.to(device)
    tr_idx, te_idx = torch.nonzero(train).squeeze(1), torch.nonzero(~train).squeeze(1)
    steps_per_epoch = (len(tr_idx) + args.batch - 1) // args.batch
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm, total = tr_idx[torch.randperm(len(tr_idx), device=device)], 0.0
        for k in range(0, len(perm), args.batch):
            idx = perm[k:k + args.batch]
            loss = nn.functional.binary_cross_entropy_with_logits(net(batch(idx, True)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(tr_idx):.4f} ({time.time() - start:.0f} s)", flush=True)
    net.eval()
    with torch.no_grad():
        prob = torch.cat([net(batch(te_idx[k:k + 256], False)) for k in range(0, len(te_idx), 256)]).sigmoid().cpu().numpy()
    truth = y[te_idx].cpu().numpy()
    aucs = []
    for k, name in enumerate(PATHOLOGIES):
        pos = int(truth[:, k].sum())
        auc = roc_auc_score(truth[:, k], prob[:, k]) if 0 < pos < len(truth) else float("nan")
        aucs.append(auc)
        print(f"  {name:20s} AUROC {auc:.3f}  ({pos} positives)")
    print(f"{args.model}: mean AUROC {np.nanmean(aucs):.3f}, min {np.nanmin(aucs):.3f}; "
          f"{len(tr_idx)} train / {len(te_idx)} test images; {args.epochs} epochs in {time.time() - start:.0f} s on {device}")


if __name__ == "__main__":
    main()
