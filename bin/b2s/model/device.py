"""Where and how the VAE computes: the device (``--device``), the CPU threads and autocast (``--amp``)."""

from __future__ import annotations

import os

import torch

from b2s.errors import InputError

AMP_CHOICES = ("auto", "on", "off")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:  # not Linux: no way to tell, stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--amp`` on ``device``, or None for plain fp32.

    ``auto`` turns bf16 autocast on only where the hardware computes it natively (CUDA with bf16,
    CPUs with AVX512-BF16/AMX): there it roughly halves the time of an epoch at the same final
    loss (benchmarks/README.md); elsewhere emulated bf16 would be slower than fp32. ``on`` forces
    it (fp16 with loss scaling on GPUs without bf16).
    """
    if spec == "off":
        return None
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if spec == "auto":
            return torch.bfloat16 if bf16 else None
        return torch.bfloat16 if bf16 else torch.float16
    if spec == "auto" and not (device.type == "cpu" and cpu_has_native_bf16()):
        return None
    return torch.bfloat16


def cpu_count() -> int:
    """CPUs this process may run on (honours taskset/cgroups cpusets, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Intra-op threads for CPU training: ``OMP_NUM_THREADS`` when set, else the CPUs we may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return cpu_count()


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda[:N]`` into a device; ``auto`` picks CUDA when available, else CPU.

    Raises:
        InputError: CUDA was asked for but is not available, or the spec is not a device.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {spec}: CUDA is not available here (torch {torch.__version__}, no visible GPU); "
                "use --device cpu (or auto), or run with a GPU profile"
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible; use --device cuda")
        return dev
    raise InputError(f"--device {spec} is not a device; use auto, cpu or cuda")
