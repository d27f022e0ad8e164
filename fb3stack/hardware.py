"""What the CPU can do, asked in one place.

`cpu_has_native_bf16` is the test both CPU bf16 paths (embedding precision "auto", transformer amp "bf16")
should share. It is not `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: that also says yes on plain AVX-512
(Skylake, Cascade Lake), where oneDNN only emulates bf16 with fp32 arithmetic plus conversions, which is
slower than fp32 there and less precise.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# x86: AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4+) or AMX-BF16 (Sapphire Rapids+);
# arm64: the BF16 extension (Graviton 3, Neoverse V1/N2) or its SVE form. Names as torch and Linux spell them.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "sve_bf16", "svebf16"})


def _torch_cpu_flags() -> frozenset[str] | None:
    """The CPU features torch's cpuinfo found (torch >= 2.9: torch.cpu.get_capabilities), or None."""
    try:
        import torch

        caps = torch.cpu.get_capabilities()
    except (ImportError, AttributeError, RuntimeError):
        return None
    return frozenset(k for k, v in caps.items() if v is True)


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """Feature names of /proc/cpuinfo text: the `flags` lines (x86) or `Features` lines (arm64)."""
    out: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            out.update(value.split())
    return frozenset(out)


def _proc_cpu_flags() -> frozenset[str] | None:
    try:
        return parse_cpuinfo_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def has_native_bf16(flags: frozenset[str] | set[str]) -> bool:
    return bool(NATIVE_BF16_FLAGS & set(flags))


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16, AMX-BF16, arm64 BF16).

    Asks torch's cpuinfo first, else /proc/cpuinfo. Default False, i.e. fp32, whenever neither can answer
    (macOS with an older torch, say): fp32 is always correct, and slower bf16 is the worse mistake.
    """
    for source, flags in (("torch", _torch_cpu_flags()), ("/proc/cpuinfo", _proc_cpu_flags())):
        if flags:
            native = has_native_bf16(flags)
            logger.debug("CPU native bf16 %s (from %s)", native, source)
            return native
    logger.debug("CPU features unknown: no native bf16 assumed")
    return False
