"""``chexnet synth``, ``prepare`` and ``combine``: data sets in, caches out."""

from __future__ import annotations

import json
import sys

from chexnet.choices import DATASETS, help_text


def add_synth(sub) -> None:
    from chexnet.data.synth_layouts import LAYOUT_HELP, LAYOUTS

    p = sub.add_parser("synth", help="write a synthetic data set in NIH's layout, or another source's",
                       description="Write a synthetic data set in NIH ChestX-ray14's layout: PNGs in images_001/images/, "
                       "Data_Entry_2017.csv, train_val_list.txt, test_list.txt, BBox_List_2017.csv; or, with --layout, "
                       "in another source's exact file layout and label encodings, read by chexnet prepare --dataset "
                       "NAME (optionally with a site shift). Deterministic for a seed.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--images", type=int, default=3000, help="number of images (default 3000)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--min-prevalence", type=float, default=0.04,
                   help="raise rare pathologies to at least this prevalence, keeping NIH's co-occurrence (0: NIH's real frequencies; default 0.04)")
    p.add_argument("--layout", choices=list(LAYOUTS), default="nih",
                   help="the file layout and label encodings, prepared back with chexnet prepare --dataset LAYOUT "
                   "(csv: --mapping OUT/mapping.yaml): " + "; ".join(f"{k}: {v}" for k, v in LAYOUT_HELP.items())
                   + " (default nih)")
    p.add_argument("--shift", type=float, default=0.0, help="with a --layout other than nih: a site shift in [0, 1] "
                   "(contrast, noise, collimation), so that external validation shows a drop (default 0)")


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="decode + resize all images once into a uint8 cache with patient-wise splits",
                       description="Read a data set's metadata and images (PNG/JPEG/DICOM), assign patient-wise "
                       "splits (the data set's own where it has them, else seeded by patient), and write "
                       "CACHE/images.u8, index.csv (labels 1, 0 or empty: missing), meta.json. Prints positives, "
                       "negatives and missing per label and split. Resumable; bad images are reported and skipped.")
    p.add_argument("--dataset", choices=list(DATASETS), default="nih", help="the data set's layout: "
                   + help_text(DATASETS) + " (default nih)")
    p.add_argument("--data", help="the data set's folder (see --dataset); required unless --verify")
    p.add_argument("--out", help="cache folder to write; required unless --verify")
    p.add_argument("--verify", metavar="CACHE", default=None,
                   help="instead: re-check a prepared cache (structure, every row's pixels, index.csv, boxes.csv) "
                   "against the digests prepare recorded, with a progress bar; a cache without them gets them. "
                   "Exit 1 naming the rows or files that differ")
    p.add_argument("--size", type=int, default=256, help="cached image side (default 256)")
    p.add_argument("--workers", type=int, default=None, help="decoder processes (default: all cores)")
    p.add_argument("--view", choices=["PA", "AP"], default=None, help="keep only this view position")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of train_val patients used for validation with the official lists")
    p.add_argument("--overwrite", action="store_true", help="rebuild OUT even if it holds a cache made with other arguments")
    # each flag here is one source's option (chexnet.data.sources.OPTIONS, where its default is): dest = the option
    g = p.add_argument_group("data set options (each for the data sets named)")
    g.add_argument("--uncertain", default=None, metavar="POLICY",
                   help="chexpert, mimic: what an uncertain label (-1) becomes: ignore (missing; default) | zeros | ones | mixed (the "
                   "CheXpert paper's per-label choice: ones for Atelectasis and Edema, zeros for Cardiomegaly, "
                   "Consolidation and Effusion), then per-label overrides, e.g. ignore,Edema=ones")
    g.add_argument("--blank", choices=["negative", "missing"], default=None,
                   help="chexpert, mimic: what a blank (not mentioned) label becomes: negative (default, the CheXpert authors' "
                   "reading) | missing (torchxrayvision's)")
    g.add_argument("--labeler", choices=["chexpert", "negbio"], default=None,
                   help="mimic: whose study labels to read: chexpert (default; mimic-cxr-2.0.0-chexpert.csv.gz) | "
                   "negbio (mimic-cxr-2.0.0-negbio.csv.gz)")
    g.add_argument("--readers", choices=["any", "majority"], default=None,
                   help="vindr: a finding is positive when any reader marked it (default) | when more than half of "
                   "the image's readers did")
    g.add_argument("--mapping", default=None, metavar="FILE",
                   help="csv: the YAML file naming the CSV (relative to --data), its image, patient, optional split / "
                   "view / sex / age columns, each label column's vocabulary label and what each cell text means "
                   "(1 / 0 / missing); required for --dataset csv (see chexnet.data.sources.csv_source)")
    g.add_argument("--expert-labels", dest="expert_labels", default=None, metavar="FILE[,FILE]",
                   help="nih-google: Google's expert-label CSVs (four_findings_expert_labels_validation_labels.csv, "
                   "..._test_labels.csv), comma-separated, absolute or relative to --data; each file's images are "
                   "the split its name says (valid -> val, test -> test), or the one given as FILE:val / FILE:test; "
                   "required for --dataset nih-google (see chexnet.data.sources.nih_google)")


def add_combine(sub) -> None:
    p = sub.add_parser("combine", help="several prepared caches as one, to train on more than one source",
                       description="Copy prepared caches (same --size) into one cache: each row keeps its split and "
                       "records its source (meta.json's parts); labels are the union, missing where a row's source "
                       "lacks one; patient ids are namespaced by source. Refuses caches that share images (by NIH "
                       "name or identical pixels) or put one patient in two splits, unless --allow-overlap. Train on "
                       "the result as on any cache (--source-sampling proportional|balanced).")
    p.add_argument("caches", nargs="+", metavar="CACHE", help="the caches to combine (two or more; folder names "
                   "distinct: they name each row's source)")
    p.add_argument("--out", required=True, help="the combined cache's folder")
    p.add_argument("--allow-overlap", action="store_true", help="combine even when the caches share images or "
                   "patients across splits (recorded in meta.json and said)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache already in --out")


def cmd_synth(args) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from chexnet.data.synthetic import generate

    if args.layout == "nih":
        if args.shift:
            raise ValueError("--shift goes with a --layout other than nih")
        summary = generate(args.out, images=args.images, size=args.size, seed=args.seed, workers=args.workers,
                           min_prevalence=args.min_prevalence)
    else:
        from chexnet.data.synth_layouts import to_layout

        Path(args.out).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".synth-nih-", dir=args.out))  # the NIH-layout draft, removed after
        try:
            generate(work, images=args.images, size=args.size, seed=args.seed, workers=args.workers,
                     min_prevalence=args.min_prevalence)
            summary = to_layout(args.layout, work, args.out, seed=args.seed, shift=args.shift)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_prepare(args) -> int:
    from chexnet.data.prepare import prepare

    if args.verify:
        return _verify(args.verify)
    missing = [flag for flag in ("--data", "--out") if getattr(args, flag[2:]) is None]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)} (or --verify CACHE)")

    from chexnet.data.sources import OPTIONS

    names = dict.fromkeys(k for opts in OPTIONS.values() for k in opts)  # every source's options: prepare's flags
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    options = {**OPTIONS.get(args.dataset, {}), **given}  # recorded in meta.json, and said here
    if options:
        print(f"{args.dataset} options: " + ", ".join(f"--{k} {v}" for k, v in options.items()))
    prepare(args.data, args.out, size=args.size, workers=args.workers, view=args.view, seed=args.seed,
            val_fraction=args.val_fraction, overwrite=args.overwrite, dataset=args.dataset, options=options)
    return 0


def _verify(cache) -> int:
    from chexnet.data.cache import verify_cache

    r = verify_cache(cache)
    if r["added"]:
        print(f"{cache}: {r['rows']} rows; no digests were recorded (a cache from before chexnet recorded them): "
              "recorded them now (rows.blake2b, meta.json), so the next --verify compares against them")
        return 0
    problems = ["index.csv changed since it was written" if r["index_changed"] else "",
                "boxes.csv changed since it was written" if r["boxes_changed"] else "",
                (f"{len(r['bad_rows'])} row(s) differ from their digests, e.g. "
                 + ", ".join(f"row {b['row']} ({b['image']})" for b in r["bad_rows"][:5])) if r["bad_rows"] else ""]
    problems = [p for p in problems if p]
    if problems:
        print(f"chexnet prepare --verify: {cache}: " + "; ".join(problems) + ": re-run chexnet prepare with "
              "--overwrite (or restore the cache from a good copy)", file=sys.stderr)
        return 1
    print(f"{cache}: all {r['rows']} rows, index.csv and boxes.csv match the digests recorded")
    return 0


def cmd_combine(args) -> int:
    from chexnet.data.combine import combine

    combine(args.caches, args.out, allow_overlap=args.allow_overlap, overwrite=args.overwrite)
    return 0
