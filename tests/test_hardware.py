"""The one CPU bf16 test: native bf16 instructions only, not oneDNN's emulation on plain AVX-512."""

from __future__ import annotations

import pytest

from fb3stack import hardware
from fb3stack.hardware import NATIVE_BF16_FLAGS, cpu_has_amx, cpu_has_native_bf16, parse_cpuinfo_flags

SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 svebf16\n"


@pytest.fixture
def uncached():
    cpu_has_native_bf16.cache_clear()
    yield
    cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("text, native", [(SKYLAKE, False), (ZEN4, True), (GRAVITON3, True), ("", False)])
def test_native_only_with_bf16_instructions(monkeypatch, uncached, text, native):
    monkeypatch.setattr(hardware, "_torch_cpu_flags", frozenset)  # an older torch without get_capabilities
    monkeypatch.setattr(hardware, "_proc_cpu_flags", lambda: parse_cpuinfo_flags(text))
    assert cpu_has_native_bf16() is native


def test_torch_answers_first_then_cpuinfo_then_no(monkeypatch, uncached):
    monkeypatch.setattr(hardware, "_torch_cpu_flags", lambda: frozenset({"avx512_f", "amx_bf16"}))
    monkeypatch.setattr(hardware, "_proc_cpu_flags", lambda: parse_cpuinfo_flags(SKYLAKE))
    assert cpu_has_native_bf16() is True
    cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(hardware, "_torch_cpu_flags", frozenset)
    assert cpu_has_native_bf16() is False
    cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(hardware, "_proc_cpu_flags", frozenset)  # no /proc either: fp32, the safe default
    assert cpu_has_native_bf16() is False


def test_torch_and_cpuinfo_agree_on_this_machine(uncached):
    from_torch, from_proc = hardware._torch_cpu_flags(), hardware._proc_cpu_flags()
    if not from_torch or not from_proc:
        pytest.skip("needs torch.cpu.get_capabilities and /proc/cpuinfo")
    assert bool(NATIVE_BF16_FLAGS & from_torch) == bool(NATIVE_BF16_FLAGS & from_proc) == cpu_has_native_bf16()


def test_amx_is_told_apart_from_avx512_bf16(monkeypatch):
    from fb3stack import hardware

    for flags, amx in (({"avx512_bf16", "avx512f"}, False), ({"avx512_bf16", "amx_bf16", "amx_tile"}, True)):
        monkeypatch.setattr(hardware, "_torch_cpu_flags", lambda flags=flags: frozenset(flags))
        cpu_has_amx.cache_clear()
        assert cpu_has_amx() is amx
    cpu_has_amx.cache_clear()
