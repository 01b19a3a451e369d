"""Preference oracles: reward functions, reward models and LLM judges behind one batched interface."""
from .base import Oracle, RewardOracle
from .build import build_oracle
from .function import CallableOracle, load_callable
from .judge import DEFAULT_INSTRUCTION, JudgeOracle
from .reward_model import RewardModelOracle
from .rubric import RubricOracle
from .sentiment import VaderOracle

__all__ = ["Oracle", "RewardOracle", "VaderOracle", "RubricOracle", "CallableOracle", "RewardModelOracle",
           "JudgeOracle", "DEFAULT_INSTRUCTION", "build_oracle", "load_callable"]
