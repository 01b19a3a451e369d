"""The throughput bench end to end on the tiny model (not timed): every contender runs, the JSON is complete."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("throughput_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_bench_runs_end_to_end_and_writes_json(tiny_model_dir, tmp_path):
    out = tmp_path / "throughput.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)  # the contenders' run directories must be gone afterwards
    proc = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_model_dir), "--batch_size", "2",
                           "--max_new_tokens", "4", "--rounds", "1", "--warmup", "1", "--out", str(out),
                           "--engine_compile", "false",  # compiled mode: tests/engine/test_vllm_compiled.py
                           "--lora_r", "4", "--dtype", "fp32",
                           "--parts", "fastalign", "fastalign-lora", "trl-default", "trl-lora", "bound"],
                          # trl-nockpt: the same code as trl-default, one flag
                          env=env, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    trl_installed = importlib.util.find_spec("trl") is not None
    assert set(report["results"]) == {"fastalign", "fastalign-lora", "trl-default", "trl-lora", "bound"}
    for name, result in report["results"].items():
        if name.startswith("trl") and not trl_installed:
            assert "TRL is not installed" in result["skipped"]
            continue
        assert result["pairs_per_sec"] > 0 and result["pairs_per_cpu_sec"] > 0, name
        assert len(result["rounds"]) == 1
        assert result["dtype"] == "fp32" and result["peak_rss_gib"] > 0.1, name
    fastalign = report["results"]["fastalign"]["median"]
    assert {"generate", "oracle", "learn", "sync", "round_s"} <= fastalign.keys()
    assert fastalign["round_s"] >= fastalign["generate"] + fastalign["learn"]  # stages lie inside the round
    assert report["results"]["bound"]["median"]["forward_backward"] > 0
    assert "fastalign_time_vs_bound/wall" in report["ratios"]
    assert trl_installed == ("fastalign_vs_trl-default/wall" in report["ratios"])
    assert trl_installed == ("fastalign-lora_vs_trl-lora/wall" in report["ratios"])
    assert {"lora_round_vs_full/wall", "lora_peak_rss_vs_full"} <= report["ratios"].keys()
    if trl_installed:
        assert report["results"]["trl-lora"]["peft_config"]["r"] == 4
    assert report["machine"]["dtype"] == "fp32" and report["machine"]["dtype_reason"] == "as given"
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["versions"]["torch"] and machine["date"]
    assert report["config"]["batch_size"] == 2 and "--rounds 1" in report["command"]
    assert "fastalign" in proc.stdout and "written:" in proc.stdout  # the printed table
    assert not [p.name for p in scratch.iterdir() if p.name.startswith(("fastalign-bench-", "trl-bench-"))]


def test_ratios_and_table_from_results():
    bench = load_bench()
    results = {"fastalign": {"pairs_per_sec": 2.0, "pairs_per_cpu_sec": 1.0, "peak_rss_gib": 4.0,
                             "median": {"round_s": 4.0, "generate": 1.0, "learn": 2.5, "sync": 0.2}},
               "fastalign-lora": {"pairs_per_sec": 2.5, "pairs_per_cpu_sec": 1.25, "peak_rss_gib": 2.0,
                                  "median": {"round_s": 3.2}},
               "trl-lora": {"pairs_per_sec": 1.0, "pairs_per_cpu_sec": 0.5, "median": {"round_s": 8.0}},
               "trl-default": {"pairs_per_sec": 0.5, "pairs_per_cpu_sec": 0.4, "median": {"round_s": 16.0}},
               "trl-nockpt": {"skipped": "TRL is not installed"},
               "bound": {"pairs_per_sec": 2.5, "pairs_per_cpu_sec": 1.25, "median": {"round_s": 3.2}}}
    rel = bench.ratios(results)
    assert rel == {"fastalign_vs_trl-default/wall": 4.0, "fastalign_vs_trl-default/cpu": 2.5,
                   "fastalign_time_vs_bound/wall": 1.25, "fastalign_time_vs_bound/cpu": 1.25,
                   "fastalign-lora_vs_trl-lora/wall": 2.5, "fastalign-lora_vs_trl-lora/cpu": 2.5,
                   "lora_round_vs_full/wall": 0.8, "lora_round_vs_full/cpu": 0.8, "lora_peak_rss_vs_full": 0.5}
    text = bench.table(results, rel)
    assert "TRL is not installed" in text and "4.00×" in text and "    2.00" in text


def test_trl_needs_two_samples_per_prompt():
    bench = load_bench()
    args = type("Args", (), {"samples_per_prompt": 4})()
    assert "exactly 2" in bench.part_trl(args, checkpointing=False)["skipped"]
