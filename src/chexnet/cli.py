"""Command line: parse arguments, build a config, call one function per command. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys

from chexnet import __version__
from chexnet.choices import (
    COMPILE_MODES,
    CONFIG_CHOICES,
    DATASETS,
    FILE_TTA_MODES,
    INPUT_TRANSFORMS,
    LOSS_WEIGHTINGS,
    PRUNERS,
    SELECT_HELP,
    SELECT_RULES,
    SOURCE_SAMPLINGS,
    TTA_HELP,
    TTA_MODES,
    help_text,
)
from chexnet.data.imageio import DEFAULT_MAX_PIXELS
from chexnet.environment import debug_enabled

EXAMPLES = """\
examples:
  chexnet synth    --out data/synth --images 3000
  chexnet prepare  --data data/synth --out cache/synth-256
  chexnet train    --cache cache/synth-256 --out runs/r1 --config chexnet --nproc 2
  chexnet evaluate runs/r1
  chexnet compare  runs/r1 runs/r2
  chexnet predict  runs/r1 xray.dcm scans/ --cam heatmaps/
  chexnet localize runs/r1
  chexnet export   runs/r1 --format onnx
  chexnet predict  --onnx runs/r1/export/model.onnx scans/
  chexnet serve    runs/r1 --port 8000
  chexnet tune     --cache cache/synth-256 --out studies/s1 --config demo --space demo --trials 8
  chexnet demo
"""

# config fields exposed as flags, in --help's sections: (name, type, help); everything else via --set KEY=VALUE.
# A field with a set of choices (chexnet.choices.CONFIG_CHOICES) gets them as the flag's choices.
TRAIN_FLAGS = {
    "data and input": [
        ("input_size", int, "network input side in pixels (the cached image is resized to it, or cropped: --input-transform)"),
        ("input_transform", str, help_text(INPUT_TRANSFORMS)),
        ("train_crop", str, "crop mode of --input-transform crop in training"),
        ("workers", int, "data loader processes per training process"),
        ("source_sampling", str, "a combined cache's sources (chexnet combine) per epoch: "
                                 + help_text(SOURCE_SAMPLINGS)),
    ],
    "model": [
        ("arch", str, "torchvision model name: densenet121, densenet169, vgg16, vgg16_bn, resnet50, efficientnet_b0, ..."),
        ("weights", str, "imagenet | none | PATH (torchvision state dict or chexnet checkpoint)"),
        ("head_bias_init", str, "initial bias of the 14-way head"),
    ],
    "optimisation": [
        ("epochs", int, "number of epochs"),
        ("batch_size", int, "images per worker per micro-batch"),
        ("accum_steps", int, "gradient accumulation steps (DDP no_sync between them)"),
        ("optimizer", str, "the optimizer"),
        ("weight_decay", float, "weight decay"),
        ("momentum", float, "SGD momentum"),
        ("loss_weighting", str, help_text(LOSS_WEIGHTINGS)),
        ("precision", str, "autocast precision (GradScaler for fp16); auto: bf16 where the CPU has AMX or "
                               "AVX512-BF16 or the GPU supports bf16, else fp32 (the choice is logged and saved)"),
        ("seed", int, "random seed"),
    ],
    "learning-rate schedule": [
        ("lr", float, "base learning rate, defined for a global batch of --lr-reference-batch"),
        ("lr_reference_batch", int, "global batch the base LR is defined for"),
        ("lr_scaling", str, "how the LR follows the global batch (auto: linear for sgd, sqrt for adaptive optimizers)"),
        ("warmup_epochs", float, "gradual LR warmup length in epochs (fractions allowed)"),
        ("schedule", str, "the LR schedule after warmup"),
    ],
    "distributed": [
        ("grad_compression", str, "DDP gradient compression hook"),
        ("strategy", str, "how the gradients are combined: allreduce (DDP ring all-reduce, default) | ps (parameter "
                          "servers: --ps-servers K of the processes hold the parameters and optimizer, the other N-K "
                          "are workers; trains what N-K all-reduce processes train)"),
        ("ps_servers", int, "with --strategy ps: how many processes are servers (the highest ranks; default 1)"),
        ("ps_staleness", int, "with --strategy ps: -1 synchronous (default: the same training as all-reduce); S >= 0 "
                              "asynchronous: each worker's gradient applied as it arrives, a worker at most S steps "
                              "ahead of the slowest (not equal to synchronous training)"),
        ("dist_timeout", float, "seconds a collective or the rendezvous waits for a peer before the job fails naming "
                                "the lost rank (default 1800; keep it above the longest rank-0-only pause: first download "
                                "of ImageNet weights, a checkpoint write to slow storage)"),
    ],
    "output and checkpoints": [
        ("select", str, "which epoch becomes best.pt: " + help_text(SELECT_HELP)),
        ("checkpoint_every", int, "also write last.pt every N optimizer steps (0: at epoch end only)"),
        ("max_steps_per_epoch", int, "cap on optimizer steps per epoch (smoke tests, benchmarks)"),
        ("log_every", int, "steps between training-loss records"),
    ],
    "performance": [("compile_mode", str, "with --compile: " + help_text(COMPILE_MODES))],
}
TRAIN_SWITCHES = {
    "data and input": [("hflip", "random horizontal flips in training")],
    "optimisation": [("nesterov", "Nesterov momentum (sgd)"),
                     ("skip_nonfinite", "skip steps with a non-finite loss instead of stopping")],
    "performance": [("compile", "torch.compile the model")],
}


def _on_off_auto(value: str):
    v = value.lower()
    if v in ("auto", "on", "off", "true", "false"):
        return "auto" if v == "auto" else v in ("on", "true")
    raise argparse.ArgumentTypeError(f"expected on, off or auto, got {value!r}")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a prepared cache (1 process, --nproc N, torchrun, mpirun, srun, Spark)",
                       description="Train a CheXNet-style classifier with synchronous data-parallel SGD (DDP). "
                       "Config precedence: defaults < --config < flags < --set. The resolved config is saved in OUT.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="recipes: chexnet (the CheXNet paper), keras-horovod (the Keras + Horovod report), vgg16, demo\n"
                       "multi-node: torchrun ... -m chexnet train ... | mpirun -np 64 chexnet train ... | srun chexnet train ...\n"
                       "Spark: chexnet train --launcher spark --spark-master spark://HOST:7077 --nproc 16 ...\n"
                       "--nproc starts the processes itself: not under torchrun, mpirun, srun or Spark, which do that")
    p.add_argument("--cache", required=True, help="prepared cache folder (chexnet prepare)")
    p.add_argument("--out", required=True, help="run directory to create or resume")
    p.add_argument("--config", help="YAML recipe: a file, or the name of a bundled recipe (chexnet, keras-horovod, vgg16, demo)")
    groups = {}
    for title in list(TRAIN_FLAGS) + [t for t in TRAIN_SWITCHES if t not in TRAIN_FLAGS]:
        groups[title] = p.add_argument_group(title)
    for title, flags in TRAIN_FLAGS.items():
        for name, typ, text in flags:
            groups[title].add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                                       choices=CONFIG_CHOICES.get(name), help=text)
    for title, switches in TRAIN_SWITCHES.items():
        for name, text in switches:
            groups[title].add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                                       default=None, help=text)
    perf = groups["performance"]
    perf.add_argument("--channels-last", dest="channels_last", nargs="?", const=True, default=None, type=_on_off_auto,
                      metavar="on|off|auto", help="channels-last memory format; auto: on where the run trains in bf16 "
                      "on bf16 hardware (AMX, AVX512-BF16, a GPU with bf16), off elsewhere (bare: on)")
    perf.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                      help="the default NCHW layout")
    p = groups["output and checkpoints"]
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field (repeatable)")
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue a run: 'last' (default when given bare), 'best', 'auto' (only if OUT has last.pt), or a checkpoint PATH")
    p = groups["distributed"]
    p.add_argument("--nproc", type=int, default=None, help="start N local worker processes (torch elastic, like "
                   "torchrun); an error under another launcher (torchrun, mpirun, srun), which starts them itself")
    p.add_argument("--max-restarts", type=int, default=0, help="with --nproc: restart the worker group up to K times after a failure, resuming from last.pt")
    p.add_argument("--launcher", choices=["local", "spark"], default="local",
                   help="where --nproc N processes run: local (this machine, torch elastic as torchrun --standalone; "
                   "default) | spark (barrier tasks on a Spark cluster's executors through TorchDistributor; needs "
                   "chexnet[spark])")
    p.add_argument("--spark-master", metavar="URL", help="with --launcher spark: spark://HOST:7077, yarn, k8s://..., "
                   "local[N] (default: the master spark-submit / spark-defaults.conf name)")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="with --launcher spark: a Spark setting (repeatable), e.g. spark.task.resource.gpu.amount=1, "
                   "spark.executor.resource.gpu.amount=8, spark.task.cpus=8")
    groups["output and checkpoints"].add_argument("--no-progress", action="store_true", help="no progress bars")


TUNE_EPILOG = """\
--trials N is the study's total: running the same command again resumes an interrupted study, a larger N
extends it, and several processes (machines) on one --storage share it, each starting trials while the study
holds fewer than N. Each trial is a normal run in STUDY/trials/NNNN/ (chexnet evaluate / compare work on it).
Outputs: STUDY/trials.csv, STUDY/best.yaml (chexnet train --config STUDY/best.yaml), STUDY/plots/*.png.

examples:
  chexnet tune --cache cache/nih-256 --out studies/report --config keras-horovod --space report --trials 50
  chexnet tune --cache cache/nih-256 --out studies/report --storage postgresql://USER:PASS@HOST/chexnet ...
  chexnet tune --summary studies/report
"""


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="optimizer / topology / learning-rate search with Optuna (each trial is a run)",
                       description="Hyperparameter search with Optuna (TPE sampler): every trial trains the base "
                       "config (--config, --epochs, --set) with the fields a search space draws, reports the "
                       "objective after each validation from the training loop, and is pruned when clearly worse "
                       "than earlier trials at the same epoch. A trial that raises is recorded as failed and the "
                       "study goes on, unless every trial so far failed with the same error (then it stops, exit 2). "
                       "The cache and each model the space can draw are checked before the first trial.",
                       epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summary", metavar="STUDY", help="print the trials table and write trials.csv, best.yaml and "
                   "the plots of STUDY again, without training")
    p.add_argument("--cache", help="prepared cache folder (chexnet prepare)")
    p.add_argument("--out", metavar="STUDY", help="study folder: study.db, trials/NNNN/, trials.csv, best.yaml, plots/")
    p.add_argument("--space", default="report", help="search space: a YAML file or a bundled space (report: the "
                   "report's optimizers x topologies x lr x batch x weight decay; demo: small, for CPUs). Default report")
    p.add_argument("--trials", type=int, default=20, help="the study's total number of trials (default 20)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="start no new trial after S seconds (a running trial finishes)")
    p.add_argument("--storage", metavar="URL", help="Optuna RDB URL shared by many machines, e.g. "
                   "postgresql://USER:PASS@HOST/DB (default: sqlite:///STUDY/study.db)")
    p.add_argument("--study-name", help="study name in the storage (default: the STUDY folder's name)")
    p.add_argument("--nproc-per-trial", type=int, default=1, metavar="K",
                   help="train each trial with K local processes (DDP, as chexnet train --nproc K; default 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (overrides the recipe)")
    p.add_argument("--objective", choices=list(SELECT_RULES), default=None,
                   help="maximize validation mean AUROC or minimize validation loss (default: the config's select "
                   "rule); each trial's best.pt is selected by it")
    p.add_argument("--pruner", choices=list(PRUNERS), default="median",
                   help="stop trials whose per-epoch objective is worse than the median of earlier trials at that "
                   "epoch (median, default), Hyperband's successive halving, or never (none)")
    p.add_argument("--pruner-startup-trials", type=int, default=3, metavar="N",
                   help="median: prune nothing until N trials have finished (default 3)")
    p.add_argument("--pruner-warmup-epochs", type=int, default=1, metavar="E",
                   help="every trial trains at least E epochs before it can be pruned (default 1)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed, for a reproducible single-process study "
                   "(the training seed is the config's: --set seed=N)")
    p.add_argument("--config", help="base recipe: a file or a bundled recipe (chexnet, keras-horovod, vgg16, demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config field (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over trials")

    # internal: one of the K processes of a trial (started by chexnet tune through chexnet.launch.local)
    w = sub.add_parser("tune-trial", description="internal: train one trial of a chexnet tune study as one of its "
                       "--nproc-per-trial processes; rank 0 reports to the trial through the storage")
    for flag in ("--storage", "--study-name", "--pruner", "--cache", "--out"):
        w.add_argument(flag, required=True)
    w.add_argument("--trial", type=int, required=True, help="the trial's number")


def _add_synth(sub) -> None:
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


def _add_prepare(sub) -> None:
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


def _add_combine(sub) -> None:
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


def _add_evaluate(sub) -> None:
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


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare evaluated runs per pathology, with paired tests and a bar chart",
                       description="Per-pathology AUROC of two or more evaluated runs on the same images, "
                       "'B better than A on k of 14', paired p-values (a bootstrap over patients when patients have "
                       "several images, as in NIH; exact DeLong when each has one), and a grouped bar chart.")
    p.add_argument("runs", nargs="+", help="run directories (the first is the reference A)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--out", default=None, help="output folder (default LAST_RUN/eval/SPLIT/compare)")
    p.add_argument("--resamples", type=int, default=2000, help="patient-bootstrap resamples for the p-values (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="probabilities, findings and heatmaps for X-ray files (PNG, JPEG, TIFF, DICOM)",
                       description="Predict the 14 pathologies for image files or folders (recursive) with a run's "
                       "checkpoint (torch) or an exported ONNX model (--onnx; no torch needed). Each file is "
                       "preprocessed exactly as in training. A bad file is reported and the others go on; the exit "
                       "status is 1 when any file failed. DICOM header values (patient name, ID, dates) are never "
                       "printed or written.",
                       usage="chexnet predict RUN PATH... [options]\n       chexnet predict --onnx FILE PATH... [options]")
    p.add_argument("paths", nargs="+", metavar="RUN PATH", help="a run directory, then image files or folders "
                   "(with --onnx: image files or folders only)")
    p.add_argument("--onnx", default=None, metavar="FILE", help="use this exported model instead of a run (onnxruntime)")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (default), json (one object per line: path, probabilities, findings, error) or csv")
    p.add_argument("--threshold", default="val", help="'val': the thresholds chexnet evaluate chose on the validation "
                   "split for this checkpoint (default; 0.5 where there are none, said on stderr), or a number such as 0.5")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tta", choices=list(FILE_TTA_MODES), default="none",
                   help="test-time augmentation: " + help_text(TTA_HELP, FILE_TTA_MODES))
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this, from the header, before decoding (default 100 megapixels)")
    p.add_argument("--cam", default=None, metavar="OUTDIR", help="write Grad-CAM heatmaps (PNG overlay at the image's size "
                   "+ raw .npy) for each finding above threshold (needs chexnet[cam]; not with --onnx)")
    p.add_argument("--cam-all", action="store_true", help="heatmaps for all 14 findings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP inference service with a web viewer (FastAPI on uvicorn)",
                       description="Serve a run (torch; heatmaps too) or an exported ONNX model over HTTP: POST "
                       "/v1/predict (multipart 'file': the JSON of chexnet predict --format json), POST "
                       "/v1/heatmap?finding=NAME (Grad-CAM PNG), POST /v1/image (the decoded X-ray as PNG), GET "
                       "/v1/model, /healthz, /readyz, /metrics (Prometheus) and a viewer at /. Concurrent requests "
                       "share forward passes (--max-batch, --max-wait-ms). Uploads stay in memory; DICOM identifiers are never returned or logged; logs "
                       "hold request id, size, status and latency. Binds to 127.0.0.1 unless --host says otherwise: "
                       "beyond this machine, put a TLS reverse proxy in front and use --token-file. SIGTERM finishes "
                       "the requests in flight and exits 0. Needs chexnet[serve].",
                       usage="chexnet serve RUN|MODEL.onnx [options]")
    p.add_argument("model", metavar="RUN|MODEL.onnx", help="a run directory (chexnet train --out) or an exported .onnx file")
    p.add_argument("--checkpoint", default="best", help="run directories: best | last | PATH (default best)")
    p.add_argument("--threshold", default="val", help="'val': the model's validation thresholds (default), or a number")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one forward pass (default 16; 1 turns "
                   "batching off)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a request waits for others to share its "
                   "forward pass (default 10)")
    p.add_argument("--token-file", default=None, metavar="FILE", help="require 'Authorization: Bearer <token>' on "
                   "/v1/* (the file's first line, 16+ characters); /healthz, /readyz and /metrics stay open")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request body, MiB (default 50; 413 over it)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this, from the header, before decoding (default 100 megapixels)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model and batcher "
                   "(default 1; the cores are shared between them)")
    g = p.add_argument_group("slow and hostile clients", "limits that keep a server answering while some clients "
                             "send a few bytes at a time or too much at once; each is per worker process")
    g.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="the request line and headers "
                   "must arrive within S seconds (default 10); else 408 and the connection closes (one that sends "
                   "nothing just closes). Idle kept-alive connections close after 5 s")
    g.add_argument("--body-timeout", type=float, default=60.0, metavar="S", help="an upload's body must arrive "
                   "within S seconds of its headers (default 60); else 408. Raise it for slow links")
    g.add_argument("--max-header-kb", type=int, default=16, metavar="KB", help="largest request line + headers, "
                   "KiB (default 16); 431 over it, refused before more is buffered")
    g.add_argument("--max-uploads", type=int, default=32, metavar="N", help="uploads read or decoded at once "
                   "(default 32; each holds up to --max-upload-mb in memory); 503 with Retry-After over it")
    g.add_argument("--max-queue", type=int, default=128, metavar="N", help="decoded images waiting for a forward "
                   "pass (default 128); 503 with Retry-After over it")
    g.add_argument("--max-connections", type=int, default=512, metavar="N", help="open connections and requests in "
                   "progress (uvicorn's limit_concurrency; default 512); requests beyond it get 503 with Retry-After")


def _add_localize(sub) -> None:
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


def _add_calibrate(sub) -> None:
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


def _add_card(sub) -> None:
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


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX with its preprocessing contract and labels",
                       description="Write a single ONNX file that takes uint8 cache rows (batch, 1, S, S) and returns the "
                       "14 probabilities, with the preprocessing spec, labels and validation thresholds in its metadata. "
                       "The file is checked against torch (to 1e-4) before it is kept. --quantize int8: a static int8 "
                       "model (QDQ, calibrated on the run's train images), checked against fp32 on the val split "
                       "(AUROC change, max |dp|). Needs chexnet[export].")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", default=None, help="output file (default RUN/export/model.onnx; with --quantize int8 "
                   "RUN/export/model.int8.onnx)")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: static int8 quantization (onnxruntime QDQ, per-channel weights; convolutions and "
                   "matrix products): about 4x smaller, 1.5-2x faster on an AVX2 CPU (more with VNNI)")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N",
                   help="with --quantize int8: train images (a seeded draw) to calibrate activation ranges on (default 64)")
    p.add_argument("--cache", default=None, help="with --quantize int8: the cache to draw calibration (train) and "
                   "check (val) images from (default: the run's training cache, recorded in run.json)")
    p.add_argument("--seed", type=int, default=0, help="with --quantize int8: seed of the calibration draw (default 0)")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole cycle on a small synthetic set: train, evaluate, predict, heatmaps, export",
                       description="End to end on a small synthetic set: synth, prepare, train with 2 workers, a "
                       "per-pathology validation/test AUROC table, calibrate (temperature scaling; the mean ECE before "
                       "and after, and test sensitivity at the thresholds chosen for 0.9 on val), then predict with "
                       "Grad-CAM heatmaps, localize "
                       "against the synthetic boxes, export to ONNX and predict with it (those steps need the cam and "
                       "export extras), then external validation on a synthetic second site in CheXpert's layout (the cross-dataset "
                       "AUROC table), and last a model card (MODEL_CARD.md, model_card.json). About 12 minutes on 2 CPU "
                       "cores; run again, it resumes.")
    p.add_argument("--out", default="demo", help="working folder (default ./demo)")
    p.add_argument("--images", type=int, default=None, help="synthetic images (default from the demo recipe)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default from the demo recipe)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chexnet", description="Train, test and tune CheXNet chest X-ray classifiers "
                                     "(DenseNet-121, 14 pathologies, NIH ChestX-ray14) with data-parallel training.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"chexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_synth, _add_prepare, _add_combine, _add_train, _add_calibrate, _add_card, _add_tune, _add_evaluate, _add_compare, _add_predict, _add_serve, _add_localize, _add_export, _add_demo):
        add(sub)
    for name in ("predict", "serve"):  # the commands that pick an operating point evaluate stored
        sub.choices[name].add_argument(
            "--operating-point", default=None, metavar="RULE[=VALUE]", help="the thresholds of this rule, chosen on "
            "validation by chexnet evaluate (f1, youden, sensitivity=V, specificity=V; evaluate measures f1, youden, "
            "sensitivity=0.9 and specificity=0.9 by default, others with --operating-point); default: evaluate's "
            "--threshold rule")
    for name in ("evaluate", "predict", "serve", "export"):  # the commands that apply a run's calibrator
        sub.choices[name].add_argument("--raw", action="store_true", help="the model's own probabilities, "
                                       "without the calibrator chexnet calibrate fitted for the checkpoint")
    for name in ("evaluate", "predict", "serve", "export", "calibrate"):  # the commands that load a checkpoint
        sub.choices[name].add_argument(
            "--trust-changed", action="store_true", help="load the checkpoint even when its SHA-256 is not the one "
            "run.json recorded when training wrote it (a checkpoint copied, swapped or damaged since)")
    return parser


def _train_cli_overrides(args) -> dict:
    names = [n for flags in TRAIN_FLAGS.values() for n, _, _ in flags]
    names += [n for switches in TRAIN_SWITCHES.values() for n, _ in switches] + ["channels_last"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def cmd_train(args) -> int:
    roles = None
    if args.nproc is not None:  # --strategy ps (flag, recipe or resumed run) is checked before any process starts
        from chexnet import ps
        from chexnet.train import resolve_config

        cfg = resolve_config(args.out, args.config, _train_cli_overrides(args), args.set, args.resume)
        ps.check(cfg, args.nproc)
        roles = ps.role_names(cfg, args.nproc)  # the launcher names a failed process with its role
    if _spawn_if_asked(args, roles):
        return 0
    from chexnet.train import resolve_config, train

    cfg = resolve_config(args.out, args.config, _train_cli_overrides(args), args.set, args.resume)
    train(cfg, args.cache, args.out, resume=args.resume, progress=not args.no_progress)
    return 0


LAUNCHER_OPTIONS = ("--nproc", "--max-restarts", "--launcher", "--spark-master", "--spark-conf")


def _worker_argv(args) -> list[str]:
    """This command line without the launcher's options: what every worker process runs."""
    from chexnet.launch.local import strip_option

    argv = args.argv
    for name in LAUNCHER_OPTIONS:
        argv = strip_option(argv, name)
    return argv


def _spawn_if_asked(args, roles: dict[int, str] | None = None) -> bool:
    """Start the worker processes when this command asks for them (``--nproc N``, ``--launcher spark``) and no
    launcher started this process; True when they ran (this process only waited for them). ``roles``: each
    rank's role (``--strategy ps``), for the launcher's error about a failed process."""
    launcher = getattr(args, "launcher", "local")
    if launcher != "spark" and (getattr(args, "spark_master", None) or getattr(args, "spark_conf", None)):
        raise ValueError("--spark-master and --spark-conf go with --launcher spark")
    wants = launcher == "spark" or args.nproc is not None
    if not wants:
        return False
    from chexnet import dist

    outer = dist.detect()
    if outer.launcher != "none":  # torchrun, mpirun, srun (or a Spark task) already started this job's processes
        asked = "--launcher spark" if launcher == "spark" else f"--nproc {args.nproc}"
        raise ValueError(f"{asked}: this process was started by {dist.describe_launcher(outer)}, which starts the "
                         f"processes itself: choose one launcher (drop {asked.split()[0]}, or run chexnet "
                         f"{args.command} {asked} outside {dist.LAUNCHER_NAMES.get(outer.launcher, outer.launcher)})")
    if launcher == "spark":
        from chexnet.launch import spark

        if args.max_restarts:
            raise ValueError("--max-restarts is for --launcher local: Spark retries a failed barrier stage itself "
                             "(spark.task.maxFailures); add --resume auto so that a retry continues from last.pt")
        spark.run(_worker_argv(args), args.nproc or 1, args.spark_master, spark.parse_conf(args.spark_conf))
        return True
    if args.nproc > 1:
        from chexnet.launch.local import spawn

        spawn(args.nproc, _worker_argv(args), max_restarts=getattr(args, "max_restarts", 0), roles=roles)
        return True
    return False


def cmd_evaluate(args) -> int:
    if _spawn_if_asked(args):
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


def cmd_predict(args) -> int:
    from chexnet.predict import run_predict

    if args.onnx:
        run, paths = None, args.paths
    else:
        run, paths = args.paths[0], args.paths[1:]
        if not paths:
            raise ValueError("give a run directory and at least one image file or folder (or --onnx FILE PATH...)")
    failed = run_predict(run, paths, onnx=args.onnx, checkpoint=args.checkpoint, fmt=args.format,
                         threshold=args.threshold, batch_size=args.batch_size, tta=args.tta,
                         max_pixels=args.max_pixels, cam_dir=args.cam, cam_all=args.cam_all,
                         progress=not args.no_progress, trust_changed=args.trust_changed, raw=args.raw,
                         operating_point=args.operating_point)
    return 1 if failed else 0


def cmd_serve(args) -> int:
    from chexnet.predict import parse_threshold
    from chexnet.serve import serve
    from chexnet.serve.config import ServeConfig

    return serve(ServeConfig(
        model=args.model, checkpoint=args.checkpoint, threshold=parse_threshold(args.threshold), host=args.host,
        port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, token_file=args.token_file,
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, workers=args.workers,
        trust_changed=args.trust_changed, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        max_header_kb=args.max_header_kb, max_uploads=args.max_uploads, max_queue=args.max_queue,
        max_connections=args.max_connections, raw=args.raw, operating_point=args.operating_point))


def cmd_localize(args) -> int:
    from chexnet.localize import localize_run

    localize_run(args.run, bbox=args.bbox, data=args.data, image_size=args.image_size, split=args.split,
                 checkpoint=args.checkpoint, cache=args.cache, cam_threshold=args.cam_threshold,
                 examples=args.examples, seed=args.seed)
    return 0


def cmd_export(args) -> int:
    from chexnet.export import export_onnx

    export_onnx(args.run, args.checkpoint, args.out, args.opset, args.dynamic_batch, trust_changed=args.trust_changed,
                raw=args.raw, quantize=args.quantize, calibration_images=args.calibration_images, cache=args.cache,
                seed=args.seed)
    return 0


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


def cmd_combine(args) -> int:
    from chexnet.data.combine import combine

    combine(args.caches, args.out, allow_overlap=args.allow_overlap, overwrite=args.overwrite)
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


def cmd_tune(args) -> int:
    from chexnet import tune

    if args.summary:
        tune.summarize(args.summary, storage=args.storage, study_name=args.study_name)
        return 0
    if not args.cache or not args.out:
        raise ValueError("--cache and --out are required (or --summary STUDY)")
    from chexnet.config import build_config

    base = build_config(args.config, {"epochs": args.epochs}, args.set)
    options = tune.TuneOptions(
        cache=args.cache, out=args.out, space=args.space, trials=args.trials, timeout=args.timeout,
        storage=args.storage, study_name=args.study_name, nproc_per_trial=args.nproc_per_trial, pruner=args.pruner,
        pruner_startup_trials=args.pruner_startup_trials, pruner_warmup_epochs=args.pruner_warmup_epochs,
        seed=args.seed, objective=args.objective, progress=not args.no_progress)
    tune.tune(base, options)
    return 0


def cmd_tune_trial(args) -> int:
    from chexnet.tune import trial_worker

    trial_worker(args.storage, args.study_name, args.trial, json.loads(args.pruner), args.cache, args.out)
    return 0


def cmd_demo(args) -> int:
    from chexnet.demo import run_demo

    run_demo(args.out, images=args.images, epochs=args.epochs, nproc=args.nproc)
    return 0


COMMANDS = {"synth": cmd_synth, "prepare": cmd_prepare, "combine": cmd_combine, "calibrate": cmd_calibrate, "card": cmd_card, "train": cmd_train, "evaluate": cmd_evaluate,
            "compare": cmd_compare, "predict": cmd_predict, "serve": cmd_serve, "localize": cmd_localize, "export": cmd_export,
            "tune": cmd_tune, "tune-trial": cmd_tune_trial, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what launchers hand their workers
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("chexnet: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        if debug_enabled():
            raise
        print(f"chexnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk where no writer named the file (a library's own write)
        from chexnet.fileio import disk_full, is_disk_full

        if not is_disk_full(exc) or debug_enabled():
            raise
        why = (disk_full(exc.filename) if exc.filename else
               f"no space left on the device ({exc}): free space where this command writes, then run it again")
        print(f"chexnet {args.command}: error: {why}", file=sys.stderr)
        return 2
