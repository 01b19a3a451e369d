"""bench/lora_sync.py end to end on the tiny model (not timed): both ways of serving a LoRA policy from vLLM
run, sync and generate the same number of tokens, and the JSON holds their medians and the ratio."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "lora_sync.py"


@pytest.mark.timeout(600)
def test_lora_sync_bench_runs_both_modes(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "lora_sync.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_model_dir), "--rounds", "1", "--warmup", "0",
                           "--batch_size", "2", "--max_new_tokens", "4", "--lora_r", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode in ("merged", "vllm-lora"):
        result = report["results"][mode]
        assert result["tokens_per_round"] == 2 * 2 * 4 and result["median"]["generate_s"] > 0, mode
    assert report["vllm_lora_round_vs_merged"] > 0 and "vllm-lora" in proc.stdout
