"""Preference oracles: reward functions, reward models and LLM judges (local or served) behind one batched interface."""
from .base import Oracle, PermanentOracleError, RewardOracle
from .build import build_oracle
from .function import CallableOracle, load_callable
from .http_judge import HttpJudgeOracle
from .judge import JudgeOracle
from .pairwise import DEFAULT_INSTRUCTION
from .remote_reward import RemoteRewardOracle
from .reward_model import RewardModelOracle
from .rubric import RubricOracle
from .sentiment import VaderOracle

__all__ = ["Oracle", "RewardOracle", "PermanentOracleError", "VaderOracle", "RubricOracle", "CallableOracle",
           "RewardModelOracle", "JudgeOracle", "HttpJudgeOracle", "RemoteRewardOracle", "DEFAULT_INSTRUCTION",
           "build_oracle", "load_callable"]
