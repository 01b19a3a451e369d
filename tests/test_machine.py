"""fastalign.machine: the CPU line every bench records beside its figures, and the flags the dtype reads."""
from pathlib import Path

from fastalign.machine import SIMD_FLAGS, cpu_flags, cpu_model
from fastalign.models import native_bf16


def _cpuinfo() -> str:
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""


def test_cpu_flags_are_the_first_cpus_flags_line():
    line = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("flags")), "flags :")
    assert cpu_flags() == frozenset(line.split(":", 1)[1].split())


def test_cpu_model_names_the_cpu_and_the_simd_flags_that_decide_the_dtype():
    text = cpu_model()
    name, _, flags = text.rpartition(" (")
    assert name and flags.endswith(")")
    have = [f for f in SIMD_FLAGS if f" {f}" in _cpuinfo()]
    assert flags[:-1] == (", ".join(have) or "no avx2")


def test_native_bf16_on_cpu_reads_the_same_flags():
    import torch

    if not torch.cuda.is_available():
        info = _cpuinfo()
        assert native_bf16() == (" avx512_bf16" in info or " amx_bf16" in info)
