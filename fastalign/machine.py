"""The machine a figure was measured on, as every bench records it (figures compare only within one machine)."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides CPU speed and the auto dtype


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """`lscpu`'s Model name (else /proc/cpuinfo's, else the platform's) and its SIMD flags that matter here."""
    name = ""
    try:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name:")), name)
    except (OSError, subprocess.SubprocessError):
        pass
    simd = [f for f in SIMD_FLAGS if f in cpu_flags()]
    return f"{name or platform.processor() or platform.machine()} ({', '.join(simd) or 'no avx2'})"
