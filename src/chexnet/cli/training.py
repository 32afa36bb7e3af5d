"""``chexnet train`` and ``chexnet tune``: the training flags (config fields by --help section), their parsers and commands."""

from __future__ import annotations

import argparse
import json

from chexnet.choices import (
    COMPILE_MODES,
    CONFIG_CHOICES,
    INPUT_TRANSFORMS,
    LOSS_WEIGHTINGS,
    PRUNERS,
    SELECT_HELP,
    SELECT_RULES,
    SOURCE_SAMPLINGS,
    help_text,
)
from chexnet.cli.processes import spawn_if_asked


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


# switches that also take "auto" (config.AUTO_SWITCHES, resolved when training starts): (name, help, --no-X help)
TRAIN_AUTO_SWITCHES = {
    "performance": [("channels_last", "channels-last memory format; auto: on where the run trains in bf16 on bf16 "
                     "hardware (AMX, AVX512-BF16, a GPU with bf16), off elsewhere", "the default NCHW layout")],
}


def _on_off_auto(value: str):
    v = value.lower()
    if v in ("auto", "on", "off", "true", "false"):
        return "auto" if v == "auto" else v in ("on", "true")
    raise argparse.ArgumentTypeError(f"expected on, off or auto, got {value!r}")


def add_train(sub) -> None:
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
    for title in list(TRAIN_FLAGS) + [t for t in {**TRAIN_SWITCHES, **TRAIN_AUTO_SWITCHES} if t not in TRAIN_FLAGS]:
        groups[title] = p.add_argument_group(title)
    for title, flags in TRAIN_FLAGS.items():
        for name, typ, text in flags:
            groups[title].add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                                       choices=CONFIG_CHOICES.get(name), help=text)
    for title, switches in TRAIN_SWITCHES.items():
        for name, text in switches:
            groups[title].add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                                       default=None, help=text)
    for title, switches in TRAIN_AUTO_SWITCHES.items():
        for name, text, off in switches:
            flag = "--" + name.replace("_", "-")
            groups[title].add_argument(flag, dest=name, nargs="?", const=True, default=None, type=_on_off_auto,
                                       metavar="on|off|auto", help=text + " (bare: on)")
            groups[title].add_argument("--no-" + flag[2:], dest=name, action="store_const", const=False, help=off)
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


def add_tune(sub) -> None:
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


def train_cli_overrides(args) -> dict:
    names = [n for flags in TRAIN_FLAGS.values() for n, _, _ in flags]
    names += [n for switches in TRAIN_SWITCHES.values() for n, _ in switches]
    names += [n for switches in TRAIN_AUTO_SWITCHES.values() for n, _, _ in switches]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def cmd_train(args) -> int:
    roles = None
    if args.nproc is not None:  # --strategy ps (flag, recipe or resumed run) is checked before any process starts
        from chexnet import ps
        from chexnet.train import resolve_config

        cfg = resolve_config(args.out, args.config, train_cli_overrides(args), args.set, args.resume)
        ps.check(cfg, args.nproc)
        roles = ps.role_names(cfg, args.nproc)  # the launcher names a failed process with its role
    if spawn_if_asked(args, roles):
        return 0
    from chexnet.train import resolve_config, train

    cfg = resolve_config(args.out, args.config, train_cli_overrides(args), args.set, args.resume)
    train(cfg, args.cache, args.out, resume=args.resume, progress=not args.no_progress)
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
