"""Command line: parse arguments, build a config, call one function per command. Nothing else lives here.

``build_parser`` gathers one parser builder per subcommand and ``main`` dispatches to one function per command;
both live in the modules named for what the commands do: :mod:`.data` (synth, prepare, combine),
:mod:`.training` (train, tune), :mod:`.evaluation` (evaluate, compare, calibrate, card, localize),
:mod:`.deploy` (predict, serve, export, demo), and :mod:`.processes` (--nproc and --launcher spark).
"""

from __future__ import annotations

import argparse
import sys

from chexnet import __version__
from chexnet.cli.training import add_train, add_tune, cmd_train, cmd_tune, cmd_tune_trial
from chexnet.cli.data import add_synth, add_prepare, add_combine, cmd_synth, cmd_prepare, cmd_combine
from chexnet.cli.evaluation import (
    add_evaluate,
    add_compare,
    add_calibrate,
    add_card,
    add_localize,
    cmd_evaluate,
    cmd_compare,
    cmd_calibrate,
    cmd_card,
    cmd_localize,
)
from chexnet.cli.deploy import (
    add_predict,
    add_serve,
    add_export,
    add_demo,
    cmd_predict,
    cmd_serve,
    cmd_export,
    cmd_demo,
)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chexnet", description="Train, test and tune CheXNet chest X-ray classifiers "
                                     "(DenseNet-121, 14 pathologies, NIH ChestX-ray14) with data-parallel training.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"chexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (add_synth, add_prepare, add_combine, add_train, add_calibrate, add_card, add_tune, add_evaluate, add_compare, add_predict, add_serve, add_localize, add_export, add_demo):
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
