"""The machine a figure was measured on, as every bench records it (figures compare only within one machine)."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides CPU speed and the auto dtype


def cpu_model() -> str:
    """`lscpu`'s Model name (else /proc/cpuinfo's, else the platform's) and its SIMD flags that matter here."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name:")), name)
    except (OSError, subprocess.SubprocessError):
        pass
    simd = [f for f in SIMD_FLAGS if f in flags]
    return f"{name or platform.processor() or platform.machine()} ({', '.join(simd) or 'no avx2'})"
