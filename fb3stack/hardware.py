"""What the CPU can do, asked in one place.

`cpu_has_native_bf16` is the one CPU bf16 test (embedding precision "auto", transformer amp "bf16"). It is not
`torch.ops.mkldnn._is_mkldnn_bf16_supported()`: that also says yes on plain AVX-512 (Skylake, Cascade Lake),
where oneDNN only emulates bf16 with fp32 arithmetic plus conversions, slower than fp32 there and less precise.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import psutil

# x86: AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4+) or AMX-BF16 (Sapphire Rapids+);
# arm64: the BF16 extension (Graviton 3, Neoverse V1/N2) or its SVE form. Names as torch and Linux spell them.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "sve_bf16", "svebf16"})


def _torch_cpu_flags() -> frozenset[str]:
    """The CPU features torch's cpuinfo found (torch >= 2.9: torch.cpu.get_capabilities); empty if it cannot say."""
    try:
        import torch

        return frozenset(k for k, v in torch.cpu.get_capabilities().items() if v is True)
    except (ImportError, AttributeError, RuntimeError):
        return frozenset()


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """Feature names of /proc/cpuinfo text: the `flags` lines (x86) or `Features` lines (arm64)."""
    lines = (line.partition(":") for line in text.splitlines())
    return frozenset(f for key, _, value in lines if key.strip() in ("flags", "Features") for f in value.split())


def _proc_cpu_flags() -> frozenset[str]:
    try:
        return parse_cpuinfo_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16, AMX-BF16, arm64 BF16).

    Asks torch's cpuinfo first, else /proc/cpuinfo. False, i.e. fp32, whenever neither can answer (macOS with
    an older torch, say): fp32 is always correct, and slower bf16 is the worse mistake.
    """
    return bool(NATIVE_BF16_FLAGS & (_torch_cpu_flags() or _proc_cpu_flags()))


@functools.cache
def cpu_has_amx() -> bool:
    """True on CPUs with AMX bf16 tile units (Intel Sapphire Rapids and later): there bf16 matmuls run several
    times faster than fp32 (docs/speed.md), while AVX512-BF16 alone gains little for training."""
    return "amx_bf16" in (_torch_cpu_flags() or _proc_cpu_flags())


@functools.cache
def physical_cores() -> int:
    """Cores, not hardware threads: hyper-threads share one core's matmul units."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
