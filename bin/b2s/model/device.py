"""Where and how the VAE computes: the device (``--device``), the CPU threads, autocast (``--amp``)
and the model input held on the device (:class:`DeviceMatrix`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp
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


class DeviceMatrix:
    """The model input held once on the device; ``batch(rows)`` returns dense float32 rows.

    Sparse input stays sparse (CSR triplet) and only each mini-batch is densified, so a large
    reference never exists densely; row lengths are kept on the CPU so batch sizes are known
    without a device sync.
    """

    def __init__(self, X: Any, device: torch.device) -> None:
        self.device = device
        self.shape = tuple(int(s) for s in X.shape)
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            if not X.has_canonical_format:
                X = X.copy()
                X.sum_duplicates()
            self.sparse = True
            indptr = X.indptr.astype(np.int64)
            self._row_nnz = np.diff(indptr)
            self._indptr = torch.from_numpy(indptr).to(device)
            self._indices = torch.from_numpy(X.indices.astype(np.int64)).to(device)
            self._data = torch.from_numpy(np.asarray(X.data, dtype=np.float32)).to(device)
        else:
            self.sparse = False
            self._dense = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(device)

    def batch(self, rows: torch.Tensor, rows_cpu: np.ndarray) -> torch.Tensor:
        """Dense ``(len(rows), genes)`` float32 tensor of the given rows (``rows`` on the device)."""
        if not self.sparse:
            return self._dense.index_select(0, rows)
        counts_cpu = self._row_nnz[rows_cpu]
        total = int(counts_cpu.sum())
        out = torch.zeros((len(rows_cpu), self.shape[1]), dtype=torch.float32, device=self.device)
        if total == 0:
            return out
        counts = torch.from_numpy(counts_cpu).to(self.device, non_blocking=True)
        starts = self._indptr.index_select(0, rows)
        # position k of row r's run maps to starts[r] + k; build all positions at once
        row_of = torch.repeat_interleave(torch.arange(len(rows_cpu), device=self.device), counts, output_size=total)
        run_start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(total, device=self.device) + torch.repeat_interleave(starts - run_start, counts, output_size=total)
        out[row_of, self._indices.index_select(0, pos)] = self._data.index_select(0, pos)
        return out
