"""bench/pool_sweeps.py: pooled paired statistics by hand, and sweeps that are not replicates refused."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("pool_sweeps", REPO / "bench" / "pool_sweeps.py")
ps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ps)

GRID = [0.0, 16.0, 32.0]


def sweep(path: Path, finals: dict[str, dict[int, float]], cpu: str = "cpu A", dtype: str = "fp32",
          sets: tuple[str, ...] = ("threads=1",), oracle: str = "vader") -> Path:
    """A sweep JSON as bench/sample_efficiency.py writes it: every curve 0.5 → (0.5 + final)/2 → final."""
    methods = {m: {"seeds": list(f), "per_seed": [[0.5, (0.5 + v) / 2, v] for v in f.values()]}
               for m, f in finals.items()}
    argv = ["--methods", ",".join(finals)] + [x for s in sets for x in ("--set", s)]
    setup = {"argv": argv, "command": "python bench/sample_efficiency.py " + " ".join(argv), "cpu": cpu,
             "dtype": [dtype], "engine_dtype": [dtype], "model": "smollm2-135m-instruct", "oracle": oracle,
             "preference": "deterministic", "loss": "dpo", "queries": 32, "batch_size": 8, "sea_samples": 4,
             "eval_prompts": 64, "max_new_tokens": 32,
             "method_overrides": {"passive": {}, "ee-ts-mixed": {"explore": "ee-ts"}}}
    path.write_text(json.dumps({"grid": GRID, "methods": methods, "setup": setup}))
    return path


def test_pooled_differences_and_ratio_by_hand(tmp_path, capsys):
    a = sweep(tmp_path / "a.json", {"passive": {0: 0.6, 1: 0.7}, "ee-ts-mixed": {0: 0.7, 1: 0.7, 2: 0.9}})
    b = sweep(tmp_path / "b.json", {"passive": {0: 0.6, 3: 0.5}, "ee-ts-mixed": {0: 0.5, 3: 0.8}},
              cpu="cpu B", dtype="bf16", sets=("threads=2", "dtype=bf16"))
    record = {"per_seed": {"0": {"preq_accuracy": 0.55, "model_labelled": 3.0}}, "range": {}}
    data = json.loads(a.read_text())
    data["methods"]["ee-ts-mixed"]["reward_model"] = record  # b was summarised before records existed
    a.write_text(json.dumps(data))
    assert ps.main([str(a), str(b), "--out", str(tmp_path / "pooled")]) == 0
    out = json.loads((tmp_path / "pooled.json").read_text())
    # replicates (sweep:seed) a:0 +0.1, a:1 0, b:0 −0.1, b:3 +0.3 (a's seed 2 has no passive twin)
    pooled = out["pooled"]
    assert pooled["replicates"] == 4 and pooled["positive"] == 2
    assert pooled["differences"] == pytest.approx([0.1, 0.0, -0.1, 0.3])
    sd = np.sqrt(((0.025) ** 2 + 0.075 ** 2 + 0.175 ** 2 + 0.225 ** 2) / 3)  # mean 0.075
    assert pooled["final_difference"] == pytest.approx(0.075)
    assert pooled["final_difference_ci95"] == pytest.approx([0.075 - 3.182 * sd / 2, 0.075 + 3.182 * sd / 2])
    # mean curves: passive 0.5, 0.55, 0.6 (reached at 32); method 0.5, 0.5875, 0.675: 0.6 at
    # 16 + 16·(0.6 − 0.5875)/(0.675 − 0.5875) = 18.29 queries → ratio 18.29/32
    assert pooled["ratio"]["ratio"] == pytest.approx((16 + 16 * 0.0125 / 0.0875) / 32)
    assert pooled["ratio"]["seeds"] == ["0:0", "0:1", "1:0", "1:3"]
    assert [s["seeds"] for s in out["sweeps"]] == [[0, 1], [0, 3]]
    assert out["sweeps"][0]["comparison"]["final_difference"] == pytest.approx(0.05)
    assert out["sweeps"][1]["cpu"] == "cpu B" and out["sweeps"][1]["dtype"] == ["bf16"]
    assert out["sweeps"][0]["reward_model"] == record and out["sweeps"][1]["reward_model"] is None
    assert out["methods"]["passive"]["mean"] == pytest.approx([0.5, 0.55, 0.6])
    assert (tmp_path / "pooled.png").stat().st_size > 0
    assert "| pooled |" in capsys.readouterr().out


@pytest.mark.parametrize("change, named", [
    ({"oracle": "rubric"}, "oracle"),
    ({"sets": ("threads=1", "bt_temperature=0.3")}, "--set options"),
])
def test_sweeps_of_different_comparisons_are_refused(tmp_path, change, named):
    finals = {"passive": {0: 0.6, 1: 0.7}, "ee-ts-mixed": {0: 0.7, 1: 0.7}}
    a = sweep(tmp_path / "a.json", finals)
    b = sweep(tmp_path / "b.json", finals, **change)
    with pytest.raises(SystemExit, match=f"differ in {named}.*not replicates"):
        ps.main([str(a), str(b), "--out", str(tmp_path / "pooled")])
    assert not (tmp_path / "pooled.json").exists()


def test_a_seed_run_twice_in_one_dtype_is_one_replicate_and_refused(tmp_path):
    a = sweep(tmp_path / "a.json", {"passive": {0: 0.6, 1: 0.7}, "ee-ts-mixed": {0: 0.7, 1: 0.7}})
    b = sweep(tmp_path / "b.json", {"passive": {1: 0.7, 2: 0.6}, "ee-ts-mixed": {1: 0.7, 2: 0.8}}, cpu="cpu B")
    with pytest.raises(SystemExit, match="both ran seed 1 in fp32"):
        ps.main([str(a), str(b), "--out", str(tmp_path / "pooled")])
    c = sweep(tmp_path / "c.json", {"passive": {1: 0.7, 2: 0.6}, "ee-ts-mixed": {1: 0.7, 2: 0.8}}, dtype="bf16")
    assert ps.main([str(a), str(c), "--out", str(tmp_path / "pooled")]) == 0  # another dtype: another replicate


def test_a_sweep_without_the_method_or_too_few_pairs_is_refused(tmp_path):
    a = sweep(tmp_path / "a.json", {"passive": {0: 0.6}, "ee-ts-mixed": {0: 0.7}})
    with pytest.raises(SystemExit, match="has no runs of bai-ts"):
        ps.main([str(a), "--method", "bai-ts", "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit, match="1 paired seed"):
        ps.main([str(a), "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit, match="no such sweep JSON"):
        ps.main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "p")])
