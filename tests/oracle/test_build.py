from __future__ import annotations

import pytest

from fastalign.config import ConfigError, RunConfig
from fastalign.oracle import CallableOracle, JudgeOracle, VaderOracle, build_oracle


def test_default_is_vader_with_run_settings():
    from fastalign.seeding import stream_seed

    oracle = build_oracle(RunConfig(preference="bt", bt_temperature=0.3, seed=5))
    assert isinstance(oracle, VaderOracle)
    assert (oracle.preference, oracle.bt_temperature, oracle.seed) == ("bt", 0.3, stream_seed(5, "oracle", 0))
    assert build_oracle(RunConfig(seed=5), rank=1).seed != oracle.seed  # each rank labels from its own stream


def test_callable_from_config(tmp_path, monkeypatch):
    (tmp_path / "oracle_build_rewards.py").write_text("def f(p, r):\n    return [len(x) for x in r]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    oracle = build_oracle(RunConfig(oracle="callable", oracle_path="oracle_build_rewards:f").validate())
    assert isinstance(oracle, CallableOracle)
    assert oracle.compare(["p"], ["longer"], ["x"]).a_wins[0]


def test_judge_from_config(tiny_model_dir):
    cfg = RunConfig(oracle="judge", oracle_path=str(tiny_model_dir), judge_instruction="Prefer brevity.").validate()
    oracle = build_oracle(cfg)
    assert isinstance(oracle, JudgeOracle) and oracle.instruction == "Prefer brevity."


def test_missing_path_is_refused():
    with pytest.raises(ConfigError, match="oracle_path"):
        build_oracle(RunConfig(oracle="reward-model"))
