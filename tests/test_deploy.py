"""The deploy/ examples stay in step with the CLI: every chexnet command they contain parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from chexnet.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command in ("train", "evaluate")


def test_kubernetes_pytorchjob_command_parses():
    job = yaml.safe_load((DEPLOY / "k8s" / "pytorchjob.yaml").read_text())
    assert job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    for role in ("Master", "Worker"):
        command = specs[role]["template"]["spec"]["containers"][0]["command"]
        assert command[0] == "chexnet"
        _parses(command[1:])


def test_slurm_script_commands_parse():
    text = (DEPLOY / "slurm" / "chexnet.sbatch").read_text().replace("\\\n", " ")
    commands = re.findall(r"^srun [^\n]*?chexnet (.*)$", text, flags=re.M)
    assert len(commands) == 2
    for line in commands:
        _parses(shlex.split(line.replace('"$CACHE"', "cache").replace('"$RUN"', "run")))
