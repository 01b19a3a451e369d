"""RunConfig → the oracle it names."""
from __future__ import annotations

from ..config import ConfigError, RunConfig
from ..models import resolve_model_dir
from .base import Oracle
from .function import CallableOracle
from .judge import JudgeOracle
from .reward_model import RewardModelOracle
from .rubric import RubricOracle
from .sentiment import VaderOracle


def build_oracle(cfg: RunConfig) -> Oracle:
    """The oracle of cfg.oracle, labelling by cfg.preference with the run's seed.

    bt_temperature scales reward differences; the judge's probability is used as is.
    """
    common = {"preference": cfg.preference, "bt_temperature": cfg.bt_temperature, "seed": cfg.seed}
    if cfg.oracle == "vader":
        return VaderOracle(**common)
    if cfg.oracle == "rubric":
        return RubricOracle(**common)
    if cfg.oracle in ("callable", "reward-model", "judge") and not cfg.oracle_path:
        raise ConfigError(f"--oracle {cfg.oracle} needs --oracle_path")
    if cfg.oracle == "callable":
        return CallableOracle(cfg.oracle_path, **common)
    if cfg.oracle == "reward-model":
        return RewardModelOracle(resolve_model_dir(cfg.oracle_path), **common)
    if cfg.oracle == "judge":
        return JudgeOracle(resolve_model_dir(cfg.oracle_path), instruction=cfg.judge_instruction, **common)
    raise ConfigError(f"unknown oracle {cfg.oracle!r}: choose vader, rubric, callable, reward-model or judge")
