"""The ExPO sweep on a tiny run: α = 0 is the SFT model (all ties), α = 1 the run's model, in memory."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fastalign.config import RunConfig
from fastalign.models import load_causal_lm

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("expo_sweep", REPO / "bench" / "expo_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_on_a_tiny_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(model=str(tiny_model_dir), oracle="callable", oracle_path="loop_rewards:letter_e_share", engine="hf",
              engine_dtype="fp32", num_eval_prompts=6, max_new_tokens=6, threads=1).save(run / "config.json")
    model = load_causal_lm(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # a visibly different "aligned" model
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(run / "final")
    bench = load_bench()
    out = tmp_path / "sweep.json"
    assert bench.main(["--run", str(run), "--alphas", "0,1,2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["alpha"] for r in rows] == [0, 1, 2]
    assert rows[0]["win_rate"] == 0.5 and rows[0]["ties"] == 1.0  # α = 0: the SFT model against itself
    assert rows[2]["ties"] < 1.0  # extrapolated weights really reached the engine
    with pytest.raises(SystemExit, match="comma-separated"):
        bench.parse_alphas("1,x")
