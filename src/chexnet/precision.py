"""``--precision auto``: bf16 autocast where the hardware runs it fast, fp32 elsewhere.

* CPU: bf16 where the CPU has AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``) -- oneDNN then runs bf16
  convolutions natively (about 2x fp32 with AMX); without them bf16 is emulated and slower than fp32.
* CUDA: bf16 where the GPU supports it (``torch.cuda.is_bf16_supported()``: Ampere and newer), else fp32
  (fp16 is never chosen automatically: it needs loss scaling and can overflow).

:func:`resolve_precision` is the pure rule (tested on given flags); :func:`resolve_both_here` applies it, and
the layout rule below, to this machine. Training resolves ``auto`` once, on rank 0, and broadcasts the answer
(every rank trains alike); the resolved value is what config.yaml, the checkpoints and run.json record, so
evaluate, calibrate and export use it.

``channels_last: auto`` follows the precision (:func:`resolve_channels_last`): channels-last where the run trains in bf16 on bf16 hardware (oneDNN's AVX512-BF16 and AMX kernels and the GPUs'
tensor cores want NHWC), the default NCHW elsewhere. Measured on the CPU (benchmarks/RESULTS.md): DenseNet-121
bf16 training 1.2-1.4x faster channels-last on an AVX512-BF16 EPYC, while fp32 channels-last was 3.6x slower on
an AVX2 EPYC. It is resolved and recorded like the precision.
"""

from __future__ import annotations

from pathlib import Path

CONCRETE = ("fp32", "bf16", "fp16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_precision(requested: str, device_type: str, cpu_flags, cuda_bf16: bool = False) -> tuple[str, str]:
    """(precision, why) for ``requested`` on a ``device_type`` ("cpu", "cuda", ...) with the CPU's ``cpu_flags``
    (an iterable of /proc/cpuinfo flag names) and, on CUDA, whether the GPU supports bf16. A concrete request is
    returned as it is."""
    if requested in CONCRETE:
        return requested, "as requested"
    if requested != "auto":
        raise ValueError(f"precision must be one of {CONCRETE + ('auto',)}, got {requested!r}")
    if device_type == "cuda":
        if cuda_bf16:
            return "bf16", "the GPU supports bf16"
        return "fp32", "the GPU does not support bf16"
    if device_type == "cpu":
        have = _cpu_bf16(cpu_flags)
        if have:
            names = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}
            return "bf16", f"CPU has {' and '.join(names[f] for f in have)}"
        return "fp32", "CPU has no AMX or AVX512-BF16"
    return "fp32", f"no bf16 rule for device type {device_type!r}"


def _cpu_bf16(flags) -> list[str]:
    """The bf16 flags (CPU_BF16_FLAGS) among a CPU's ``flags``."""
    return [f for f in CPU_BF16_FLAGS if f in set(flags or ())]


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (its first ``flags`` line); empty where it cannot be read (not
    Linux): then ``auto`` picks fp32 on the CPU."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _hardware(device, probe: bool) -> tuple[str, frozenset[str], bool]:
    """(device type, CPU flags, CUDA bf16) of ``device`` on this machine; with ``probe`` False (nothing is
    "auto") nothing is read."""
    device_type = getattr(device, "type", str(device))
    flags = cpu_flags() if probe and device_type == "cpu" else frozenset()
    cuda_bf16 = False
    if probe and device_type == "cuda":
        import torch

        cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    return device_type, flags, cuda_bf16


def resolve_channels_last(requested, precision: str, device_type: str, cpu_flags,
                          cuda_bf16: bool = False) -> tuple[bool, str]:
    """(channels_last, why) for a ``requested`` True / False / "auto" given the run's resolved ``precision`` on a
    ``device_type`` with the CPU's ``cpu_flags`` (and, on CUDA, whether the GPU supports bf16). True and False are
    returned as they are."""
    if isinstance(requested, bool):
        return requested, "as requested"
    if requested != "auto":
        raise ValueError(f"channels_last must be true, false or auto, got {requested!r}")
    if precision != "bf16":
        return False, f"{precision} trains in the default NCHW layout"
    if device_type == "cuda":
        if cuda_bf16:
            return True, "bf16 on a GPU with bf16"
        return False, "the GPU has no bf16"
    if device_type == "cpu":
        if _cpu_bf16(cpu_flags):
            return True, "bf16 on a CPU with AMX or AVX512-BF16 (oneDNN's bf16 kernels want NHWC)"
        return False, "bf16 is emulated on this CPU (no AMX or AVX512-BF16)"
    return False, f"no channels-last rule for device type {device_type!r}"


def resolve_both_here(precision: str, channels_last, device) -> tuple[str, str, bool, str]:
    """(precision, why, channels_last, why) for a run's requested values on this machine: :func:`resolve_precision`
    then :func:`resolve_channels_last` on the precision it chose, the hardware read once."""
    device_type, flags, cuda_bf16 = _hardware(device, "auto" in (precision, channels_last))
    precision, why = resolve_precision(precision, device_type, flags, cuda_bf16)
    layout, layout_why = resolve_channels_last(channels_last, precision, device_type, flags, cuda_bf16)
    return precision, why, layout, layout_why
