"""--precision auto and --channels-last auto: the rules on given CPU flags / GPUs, the flags of /proc/cpuinfo, and
a tiny real training that says what it chose and records the resolved values (config.yaml, checkpoints,
run.json)."""

from __future__ import annotations

import json

import pytest
import yaml

from chexnet.precision import cpu_flags, resolve_both_here, resolve_channels_last, resolve_precision

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8".split()
COOPER_LAKE = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16".split()
ICE_LAKE = "fpu sse2 avx2 avx512f avx512_vnni".split()
EPYC_ZEN3 = "fpu sse2 avx2 fma".split()


@pytest.mark.parametrize("flags, want, why", [
    (SAPPHIRE_RAPIDS, "bf16", "CPU has AMX and AVX512-BF16"),
    (COOPER_LAKE, "bf16", "CPU has AVX512-BF16"),
    (["amx_bf16"], "bf16", "CPU has AMX"),
    (ICE_LAKE, "fp32", "CPU has no AMX or AVX512-BF16"),  # VNNI is int8, not bf16
    (EPYC_ZEN3, "fp32", "CPU has no AMX or AVX512-BF16"),
    ([], "fp32", "CPU has no AMX or AVX512-BF16"),  # /proc/cpuinfo unreadable
])
def test_auto_on_the_cpu_follows_the_flags(flags, want, why):
    assert resolve_precision("auto", "cpu", flags, cuda_bf16=False) == (want, why)


@pytest.mark.parametrize("cuda_bf16, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_gpu_not_the_host_cpu(cuda_bf16, want):
    for flags in (SAPPHIRE_RAPIDS, EPYC_ZEN3):
        precision, why = resolve_precision("auto", "cuda", flags, cuda_bf16)
        assert precision == want and "GPU" in why


def test_concrete_requests_are_kept_and_others_refused():
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, "cpu", EPYC_ZEN3) == (p, "as requested")
        assert resolve_precision(p, "cuda", [], cuda_bf16=False)[0] == p
    assert resolve_precision("auto", "mps", SAPPHIRE_RAPIDS)[0] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu", [])


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    # nothing "auto": the machine is not read, the requests come back as they are
    assert resolve_both_here("fp16", False, "cpu") == ("fp16", "as requested", False, "as requested")


def test_step_context_refuses_an_unresolved_precision():
    import torch

    from chexnet.engine import StepContext

    with pytest.raises(ValueError, match="auto"):
        StepContext(torch.device("cpu"), "auto")


def test_auto_is_a_train_choice_and_the_demo_uses_it():
    from chexnet.config import build_config

    assert build_config(None, {"precision": "auto"}).precision == "auto"
    assert build_config("demo", {}).precision == "auto"
    assert build_config("demo", {}).channels_last == "auto"
    assert build_config(None, {}, ["channels_last=auto"]).channels_last == "auto"
    assert build_config(None, {}, ["channels_last=true"]).channels_last is True
    assert build_config(None, {}).channels_last is False


def test_channels_last_must_be_a_switch_or_auto():
    from chexnet.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="channels_last.*true/false, or auto"):
        build_config(None, {}, ["channels_last=sometimes"])
    with pytest.raises(ConfigError, match="'compile'.*true/false, got"):  # other switches take no auto
        build_config(None, {}, ["compile=auto"])
    with pytest.raises(ValueError, match="channels_last"):
        resolve_channels_last("maybe", "bf16", "cpu", SAPPHIRE_RAPIDS)


@pytest.mark.parametrize("precision, device, flags, cuda_bf16, want", [
    ("bf16", "cpu", SAPPHIRE_RAPIDS, False, True),  # AMX: oneDNN's bf16 kernels want NHWC
    ("bf16", "cpu", COOPER_LAKE, False, True),  # AVX512-BF16
    ("bf16", "cpu", EPYC_ZEN3, False, False),  # emulated bf16 (asked for explicitly): no NHWC
    ("fp32", "cpu", SAPPHIRE_RAPIDS, False, False),  # fp32: channels-last measured slower on the CPU
    ("fp32", "cpu", EPYC_ZEN3, False, False),
    ("bf16", "cuda", EPYC_ZEN3, True, True),  # tensor cores: the GPU decides, not the host CPU
    ("bf16", "cuda", SAPPHIRE_RAPIDS, False, False),
    ("fp16", "cuda", [], True, False),
    ("bf16", "mps", SAPPHIRE_RAPIDS, False, False),
])
def test_channels_last_auto_follows_the_precision_and_the_hardware(precision, device, flags, cuda_bf16, want):
    got, why = resolve_channels_last("auto", precision, device, flags, cuda_bf16)
    assert got is want and why
    for explicit in (True, False):  # a concrete request is kept
        assert resolve_channels_last(explicit, precision, device, flags, cuda_bf16) == (explicit, "as requested")


def test_tiny_training_with_auto_says_and_records_its_choice(tiny_cache, train_args, tmp_path, chexnet_main,
                                                             one_thread):
    from chexnet.checkpoint import load_checkpoint

    want, why = resolve_precision("auto", "cpu", cpu_flags())
    layout, layout_why = resolve_channels_last("auto", want, "cpu", cpu_flags())
    run = tmp_path / "run"
    err = chexnet_main(*train_args(tiny_cache, run, precision="auto", channels_last="auto")).stderr
    assert err.splitlines()[0] == f"precision auto -> {want} ({why})", err[:400]
    assert err.splitlines()[1] == f"channels-last auto -> {'on' if layout else 'off'} ({layout_why})", err[:400]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["precision"], saved["channels_last"]) == (want, layout)
    info = json.loads((run / "run.json").read_text())
    assert info["precision"] == want and info["precision_why"] == f"auto: {why}"
    for name in ("best.pt", "last.pt"):
        config = load_checkpoint(run / "checkpoints" / name)["config"]
        assert (config["precision"], config["channels_last"]) == (want, layout)
