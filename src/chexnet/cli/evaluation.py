"""``chexnet evaluate``, ``compare``, ``calibrate``, ``card`` and ``localize``: what a trained run is worth."""

from __future__ import annotations

from chexnet.choices import TTA_HELP, TTA_MODES, help_text
from chexnet.cli.processes import spawn_if_asked


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="per-pathology AUROC with CIs, thresholds, plots, published baselines",
                       description="Evaluate a run's checkpoint on a split: predictions.csv, metrics.json, auroc.csv, "
                       "subgroups.csv (sex, age band, view), calibration.csv (ECE, MCE, Brier, NLL, calibration "
                       "slope and intercept), operating_points.csv (sensitivity, specificity, PPV, NPV, F1 per "
                       "threshold rule), report.md and ROC / PR / reliability / published-comparison plots in "
                       "RUN/eval/<split>/. 95%% CIs come from a bootstrap over patients; thresholds are chosen "
                       "on the validation split. Probabilities are calibrated where chexnet calibrate fitted a "
                       "calibrator for the checkpoint (--raw: the model's own).")
    p.add_argument("run", help="run directory (chexnet train --out)")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best: the epoch the run's "
                   "selection rule chose; an error, never last.pt, if there is none)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--cache", action="append", default=None, metavar="CACHE",
                   help="evaluate on this cache instead of the one recorded in RUN/run.json: the run's own data moved "
                   "or copied (RUN/eval/SPLIT/), or another data set (external validation: RUN/eval/external/CACHE/"
                   "SPLIT/; the run's labels it lacks are not scored). Its images must have the run's size. "
                   "Repeat it for several data sets: each is evaluated, then a cross-dataset table (RUN/eval/"
                   "external/cross_dataset.csv, .md, .png)")
    p.add_argument("--allow-overlap", action="store_true", help="evaluate another data set even where its split "
                   "shares images (or, between NIH's sources, patients) with the run's train and val splits "
                   "(refused by default: that AUROC is not an external one)")
    p.add_argument("--tta", choices=list(TTA_MODES), default="none", help="test-time augmentation: " + help_text(TTA_HELP))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--no-plots", action="store_true", help="numbers and tables only: no roc.png, pr.png, "
                   "auroc_vs_published.png, reliability.png (seconds per split on a CPU)")
    p.add_argument("--threshold", choices=["f1", "youden"], default="f1", help="operating point chosen on val (default max-F1)")
    p.add_argument("--operating-point", action="append", default=None, metavar="RULE[=VALUE]",
                   help="a threshold rule chosen per label on val and measured with CIs (operating_points.csv), "
                   "repeatable: f1, youden, sensitivity=V, specificity=V (default: f1, youden, sensitivity=0.9, "
                   "specificity=0.9); all are saved in thresholds.json for predict, export and serve")
    p.add_argument("--nproc", type=int, default=None, help="evaluate with N local processes")


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare evaluated runs per pathology, with paired tests and a bar chart",
                       description="Per-pathology AUROC of two or more evaluated runs on the same images, "
                       "'B better than A on k of 14', paired p-values (a bootstrap over patients when patients have "
                       "several images, as in NIH; exact DeLong when each has one), and a grouped bar chart.")
    p.add_argument("runs", nargs="+", help="run directories (the first is the reference A)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--out", default=None, help="output folder (default LAST_RUN/eval/SPLIT/compare)")
    p.add_argument("--resamples", type=int, default=2000, help="patient-bootstrap resamples for the p-values (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a calibrator on the validation split (temperature or Platt scaling)",
                       description="Fit temperature scaling (one temperature per label; Platt scaling with --method "
                       "platt) on the run's validation predictions and save RUN/calibrator.json for that "
                       "checkpoint, with its validation thresholds raw and calibrated. predict, evaluate, export "
                       "and serve then output calibrated probabilities (--raw: the model's own). AUROC is unchanged.")
    p.add_argument("run", help="run directory")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best)")
    p.add_argument("--method", choices=["temperature", "platt"], default="temperature",
                   help="temperature: one temperature per label (default); platt: slope and intercept per label "
                   "(also corrects a prevalence shift)")
    p.add_argument("--cache", default=None, help="the run's cache, moved or copied (default: run.json's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-positives", type=int, default=10, help="a label with fewer validation positives (or "
                   "negatives) gets the temperature fitted on all labels together (default 10)")


def add_card(sub) -> None:
    p = sub.add_parser("card", help="a model card for an evaluated run: MODEL_CARD.md and model_card.json",
                       description="Write RUN/MODEL_CARD.md (YAML front matter) and RUN/model_card.json (Model Card "
                       "Toolkit's shape) from the run: data, splits, prevalence and demographics, label mapping, "
                       "architecture, every hyperparameter, versions and git commit, hardware and training time, "
                       "AUROC, calibration and operating points with CIs, subgroups, the calibrator and the export. "
                       "Intended use, out-of-scope uses, limitations and ethical considerations come from --facts; "
                       "without them they are marked MISSING and the command exits 2 naming them.")
    p.add_argument("run", help="an evaluated run directory (chexnet evaluate RUN first)")
    p.add_argument("--facts", default=None, metavar="card.yaml", help="intended_use, out_of_scope_uses, "
                   "limitations, ethical_considerations (required), owners, license, references, name, overview")


def add_localize(sub) -> None:
    p = sub.add_parser("localize", help="Grad-CAM localization against bounding boxes (Wang et al. 2017 protocol)",
                       description="For every labelled box (the cache's boxes.csv: VinDr-CXR, RSNA; else NIH's "
                       "BBox_List_2017.csv), the heatmap of that finding is "
                       "thresholded and boxed around its connected regions; accuracy at IoBB >= T (T = 0.1, 0.25, 0.5, "
                       "0.75, 0.9) and IoU >= 0.5 per pathology, beside random boxes of the same sizes. Writes "
                       "RUN/eval/localize/ (localize.csv, boxes.csv, localize.md, localize.png, examples/).")
    p.add_argument("run", help="run directory")
    p.add_argument("--bbox", default=None, help="box list CSV in NIH's format (default: the cache's boxes.csv where "
                   "prepare wrote one, with the image sizes in it; else BBox_List_2017.csv in the data folder the "
                   "cache was prepared from)")
    p.add_argument("--data", default=None, help="the original image folder, for each image's size (default: the one "
                   "recorded in the cache; not used with the cache's boxes.csv)")
    p.add_argument("--image-size", type=int, default=None, help="assume every original image is N x N pixels (NIH's PNGs "
                   "are 1024) instead of reading sizes from --data")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best)")
    p.add_argument("--cache", default=None, help="the cache to read images from (default: the run's)")
    p.add_argument("--cam-threshold", type=float, default=0.5, help="heatmap threshold, a fraction of its maximum (default 0.5)")
    p.add_argument("--examples", type=int, default=8, help="overlay examples to draw (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-box baseline")


def cmd_evaluate(args) -> int:
    if spawn_if_asked(args):
        return 0
    from chexnet.evaluate import DEFAULT_RULES, evaluate_across, evaluate_run
    from chexnet.operating_points import parse_rule

    rules = [r.strip().lower() for r in args.operating_point] if args.operating_point else list(DEFAULT_RULES)
    for r in rules:
        parse_rule(r)  # a bad rule is an error before any prediction
    caches = args.cache or [None]
    if len(caches) > 1:
        evaluate_across(args.run, caches, args.checkpoint, args.split, args.tta, args.batch_size, args.bootstrap,
                        args.threshold, allow_overlap=args.allow_overlap, trust_changed=args.trust_changed,
                        raw=args.raw, rules=rules, plots=not args.no_plots)
    else:
        evaluate_run(args.run, args.checkpoint, args.split, args.tta, args.batch_size, args.bootstrap, args.threshold,
                     cache=caches[0], allow_overlap=args.allow_overlap, trust_changed=args.trust_changed,
                     raw=args.raw, rules=rules, plots=not args.no_plots)
    return 0


def cmd_compare(args) -> int:
    if len(args.runs) < 2:
        raise ValueError("compare needs at least two runs")
    from chexnet.evaluate import compare

    compare(args.runs, args.split, args.out, n_resamples=args.resamples, seed=args.seed)
    return 0


def cmd_calibrate(args) -> int:
    from chexnet.calibrate import calibrate_run

    calibrate_run(args.run, args.checkpoint, args.method, args.cache, args.batch_size,
                  trust_changed=args.trust_changed, min_positives=args.min_positives)
    return 0


def cmd_card(args) -> int:
    from chexnet.card import write_card

    md, js = write_card(args.run, args.facts)
    print(f"wrote {md} and {js}")
    return 0


def cmd_localize(args) -> int:
    from chexnet.localize import localize_run

    localize_run(args.run, bbox=args.bbox, data=args.data, image_size=args.image_size, split=args.split,
                 checkpoint=args.checkpoint, cache=args.cache, cam_threshold=args.cam_threshold,
                 examples=args.examples, seed=args.seed)
    return 0
