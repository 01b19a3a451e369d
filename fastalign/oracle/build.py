"""RunConfig → the oracle it names."""
from __future__ import annotations

from ..config import ConfigError, RunConfig
from ..seeding import stream_seed
from ..models import load_tokenizer, resolve_model_dir
from .base import Oracle
from .function import CallableOracle
from .http_judge import HttpJudgeOracle
from .judge import JudgeOracle
from .remote_reward import RemoteRewardOracle, chat_prompt_renderer
from .reward_model import RewardModelOracle
from .rubric import RubricOracle
from .sentiment import VaderOracle


def build_oracle(cfg: RunConfig, rank: int = 0) -> Oracle:
    """The oracle of cfg.oracle, labelling by cfg.preference from this rank's own seeded stream.

    bt_temperature scales reward differences; the judge's probability is used as is. A served judge is
    asked whether it serves the model right here, so a wrong URL or name stops the run before it starts.
    """
    common = {"preference": cfg.preference, "bt_temperature": cfg.bt_temperature,
              "seed": stream_seed(cfg.seed, "oracle", rank)}
    service = {"timeout": cfg.oracle_timeout, "api_key_env": cfg.oracle_api_key_env}
    if cfg.oracle == "vader":
        return VaderOracle(**common)
    if cfg.oracle == "rubric":
        return RubricOracle(**common)
    if cfg.oracle == "judge" and cfg.judge_url:
        return HttpJudgeOracle(cfg.judge_url, cfg.judge_model, instruction=cfg.judge_instruction,
                               endpoint=cfg.judge_endpoint, concurrency=cfg.oracle_concurrency, **service, **common)
    if cfg.oracle == "remote-reward":
        if not cfg.reward_url:
            raise ConfigError("--oracle remote-reward needs --reward_url")
        render = chat_prompt_renderer(load_tokenizer(resolve_model_dir(cfg.model)))
        return RemoteRewardOracle(cfg.reward_url, render_prompt=render, **service, **common)
    if cfg.oracle in ("callable", "reward-model", "judge") and not cfg.oracle_path:
        raise ConfigError(f"--oracle {cfg.oracle} needs --oracle_path"
                          + (" (a local judge) or --judge_url and --judge_model (a served one)"
                             if cfg.oracle == "judge" else ""))
    if cfg.oracle == "callable":
        return CallableOracle(cfg.oracle_path, **common)
    if cfg.oracle == "reward-model":
        return RewardModelOracle(resolve_model_dir(cfg.oracle_path), **common)
    if cfg.oracle == "judge":
        return JudgeOracle(resolve_model_dir(cfg.oracle_path), instruction=cfg.judge_instruction, **common)
    raise ConfigError(f"unknown oracle {cfg.oracle!r}: choose vader, rubric, callable, reward-model, judge or "
                      "remote-reward")
