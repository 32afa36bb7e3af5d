"""The deploy/ examples stay in step with the CLI and with each other: every chexnet command they contain parses,
Kubernetes runs the training command SLURM runs, and its image is the one the Dockerfile builds."""

from __future__ import annotations

import fnmatch
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


def test_kubernetes_parameter_server_variant_is_the_pytorchjob_plus_the_strategy():
    from chexnet import ps
    from chexnet.train import resolve_config
    from chexnet.cli.training import train_cli_overrides

    base = yaml.safe_load((DEPLOY / "k8s" / "pytorchjob.yaml").read_text())["spec"]["pytorchReplicaSpecs"]
    job = yaml.safe_load((DEPLOY / "k8s" / "pytorchjob-ps.yaml").read_text())
    specs = job["spec"]["pytorchReplicaSpecs"]
    command = specs["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command == specs["Worker"]["template"]["spec"]["containers"][0]["command"]
    plain = base["Master"]["template"]["spec"]["containers"][0]["command"]
    assert _options(command) == {**_options(plain), "--strategy": "ps", "--ps-servers": "2"}
    args = build_parser().parse_args(command[1:])
    cfg = resolve_config("/nonexistent/run", args.config, train_cli_overrides(args), args.set, None)
    ps.check(cfg, 1 + specs["Worker"]["replicas"])  # a valid layout for the job's pods


def test_slurm_script_commands_parse():
    text = (DEPLOY / "slurm" / "chexnet.sbatch").read_text().replace("\\\n", " ")
    commands = re.findall(r"^srun [^\n]*?chexnet (.*)$", text, flags=re.M)
    assert len(commands) == 2
    for line in commands:
        _parses(shlex.split(line.replace('"$CACHE"', "cache").replace('"$RUN"', "run")))


ROOT = DEPLOY.parent
PATH_VALUES = {"--cache", "--out", "--workers"}  # what may differ between deployments: paths, loader processes


def _options(argv: list[str]) -> dict[str, str | None]:
    """``--flag value`` / ``--switch`` pairs of a chexnet command line (values of PATH_VALUES dropped)."""
    out, i = {}, 0
    while i < len(argv):
        flag = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        out[flag] = None if flag in PATH_VALUES else value
        i += 2 if value is not None else 1
    return out


def test_kubernetes_runs_the_same_training_command_as_slurm():
    job = yaml.safe_load((DEPLOY / "k8s" / "pytorchjob.yaml").read_text())
    k8s = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    text = (DEPLOY / "slurm" / "chexnet.sbatch").read_text().replace("\\\n", " ")
    slurm = shlex.split(re.search(r"^srun [^\n]*?chexnet (train .*)$", text, flags=re.M).group(1))
    assert k8s[1] == slurm[0] == "train"
    assert _options(k8s[2:]) == _options(slurm[1:])


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_installs_the_package_and_runs_chexnet():
    steps = _dockerfile()
    assert steps[-2] == ("ENTRYPOINT", '["chexnet"]')
    args = {a.split("=")[0]: a.partition("=")[2] for k, a in steps if k == "ARG"}
    assert args["TORCH_VARIANT"] == "cpu", "CPU by default; --build-arg TORCH_VARIANT=cu128 for GPUs"
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in runs
    assert 'pip install "/opt/chexnet${EXTRAS:+[$EXTRAS]}"' in runs and "chexnet --version" in runs
    assert any(k == "USER" and a != "root" for k, a in steps), "the image does not train as root"


def test_dockerfile_copies_exist_and_are_not_docker_ignored():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = [src for k, a in _dockerfile() if k == "COPY" for src in a.split()[:-1]]
    assert set(sources) >= {"pyproject.toml", "README.md", "src"}
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which the repository lacks"
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), f".dockerignore hides {src}"
    assert {".git", ".venv"} <= set(ignored), "the build context leaves out the repository and virtualenvs"


def test_kubernetes_image_is_the_dockerfiles_gpu_variant():
    job = yaml.safe_load((DEPLOY / "k8s" / "pytorchjob.yaml").read_text())
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    image = pod["containers"][0]["image"]
    assert image.endswith(":cuda") and "nvidia.com/gpu" in pod["containers"][0]["resources"]["limits"]
    assert f"docker build -t {image} --build-arg TORCH_VARIANT=cu" in (DEPLOY / "k8s" / "pytorchjob.yaml").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    assert pod["securityContext"]["fsGroup"] == uid  # the image's user, so that it can write the run
