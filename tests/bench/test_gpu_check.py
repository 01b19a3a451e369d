"""bench/gpu_check.py on the CPU (--dry_run): every stage runs at tiny shapes, Triton in its interpreter, and
writes the one JSON a GPU run writes; on a machine without CUDA the real run refuses with a clear message."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_passes_every_stage_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry_run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and report["device"] == "cpu (dry run)"
    checks = {c["check"].split(" ")[0] for c in report["kernels"]}
    assert checks == {"linear_logprobs", "sequence_loss[dpo]", "sequence_loss[aot]", "ensemble_mlp"}
    assert {c["dtype"] for c in report["kernels"]} == {"fp32", "bf16"}
    assert {r["method"] for r in report["bench"]} >= {"naive", "fastalign"}
    assert report["loop"]["summary"]["rounds"] == 3


def test_without_cuda_the_real_check_says_where_to_run_it(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr
