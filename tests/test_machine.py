"""fastalign.machine: the CPU line every bench records beside its figures."""
from pathlib import Path

from fastalign.machine import SIMD_FLAGS, cpu_model


def test_cpu_model_names_the_cpu_and_the_simd_flags_that_decide_the_dtype():
    text = cpu_model()
    name, _, flags = text.rpartition(" (")
    assert name and flags.endswith(")")
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    have = [f for f in SIMD_FLAGS if f" {f}" in cpuinfo]
    assert flags[:-1] == (", ".join(have) or "no avx2")
