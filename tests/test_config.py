"""The run config: file + flags → RunConfig, and every bad input refused with a message naming it."""
import json

import pytest

from fastalign.config import ConfigError, RunConfig, parse_args


def test_defaults_are_valid():
    cfg = RunConfig().validate()
    assert cfg.loss == "dpo" and cfg.oracle == "vader" and cfg.samples_per_prompt == 2


def test_file_then_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: ipo\nbeta: 0.5\nrounds: 3\n")
    cfg = parse_args(["--config", str(path), "--beta", "0.2", "--max-new-tokens", "16"])
    assert (cfg.loss, cfg.beta, cfg.rounds, cfg.max_new_tokens) == ("ipo", 0.2, 3, 16)


def test_json_round_trip(tmp_path):
    cfg = RunConfig(loss="simpo", beta=2.0, max_queries=64)
    cfg.save(tmp_path / "c.json")
    assert RunConfig.from_file(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["loss"] == "simpo"


@pytest.mark.parametrize("argv, message", [
    (["--loss", "kto"], "unknown loss 'kto'"),
    (["--oracle", "human"], "unknown oracle 'human'"),
    (["--engine", "tgi"], "unknown engine 'tgi'"),
    (["--engine", "hf", "--engine_compile", "true"], "engine_compile is vLLM's compiled mode"),
    (["--beta", "0"], "beta must be > 0"),
    (["--learning_rate", "0"], "learning_rate must be > 0"),
    (["--beta", "abc"], "option beta: expected float"),
    (["--rounds", "2.5"], "option rounds: expected int"),
    (["--samples_per_prompt", "1"], "samples_per_prompt must be ≥ 2"),
    (["--loss", "cdpo"], "needs --label_smoothing"),
    (["--label_smoothing", "0.1"], "label_smoothing applies to --loss cdpo, robust, exo_pair"),
    (["--oracle", "judge"], "--oracle judge needs --oracle_path"),
    (["--oracle_path", "x:y"], "not used by the vader oracle"),
    (["--judge_instruction", "be brief"], "applies only to --oracle judge"),
    (["--batch_size", "8", "--micro_batch_size", "3"], "must be a multiple of micro_batch_size"),
    (["--zero_stage", "4"], "zero_stage must be 0, 1, 2 or 3"),
    (["--model", "/no/such/model"], "model directory not found"),
    (["--prompts", "/no/such.jsonl"], "prompts not found"),
    (["--max_queries", "4", "--batch_size", "8"], "below one round's batch_size"),
    (["--top_p", "1.5"], "top_p must be in (0, 1]"),
    (["--logprob_impl", "torch", "--zero_stage", "3"], "ZeRO-3 partitions it"),
    (["--logprob_impl", "gpu"], "unknown logprob_impl 'gpu'"),
    (["--logprob_impl", "triton"], "need a CUDA device"),
    (["--on_bad_prompt", "ignore"], "unknown on_bad_prompt 'ignore'"),
    (["--on_long_prompt", "cut"], "unknown on_long_prompt 'cut'"),
    (["--keep_checkpoints", "0"], "keep_checkpoints must be ≥ 1"),
    (["--checkpoint_every", "-1"], "checkpoint_every must be ≥ 0"),
    (["--oracle_timeout", "0"], "oracle_timeout must be > 0"),
    (["--oracle_retries", "-2"], "oracle_retries must be ≥ 0"),
    (["--resume", "/no/such/checkpoint"], "--resume '/no/such/checkpoint': no such directory"),
    (["--lora_r", "-1"], "lora_r must be ≥ 0"),
    (["--lora_alpha", "8"], "--lora_alpha applies only to LoRA: add --lora_r"),
    (["--save_merged"], "--save_merged applies only to LoRA"),
    (["--lora_r", "8", "--lora_alpha", "0"], "lora_alpha must be > 0"),
    (["--lora_r", "8", "--lora_dropout", "1"], "lora_dropout must be in"),
    (["--lora_r", "8", "--lora_target_modules", " , "], "give comma-separated module names"),
    (["--lora_r", "8", "--lora_target_modules", "q_proj,lm_head"], "may not include lm_head"),
    (["--lora_r", "8", "--zero_stage", "3"], "ZeRO-3 partitions the base weights"),
    (["--lora_r", "8", "--lora_dropout", "0.1", "--algorithm", "bpo"], "use --lora_dropout 0 with bpo"),
])
def test_bad_flags_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(argv)


def test_unknown_option_in_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: dpo\nlearning_rte: 1e-5\n")
    with pytest.raises(ConfigError, match="unknown option.*learning_rte"):
        parse_args(["--config", str(path)])


def test_malformed_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: [dpo\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        parse_args(["--config", str(path)])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_lora_flags():
    cfg = parse_args(["--lora_r", "16", "--lora_target_modules", "q_proj, v_proj", "--save_merged"])
    assert (cfg.lora_r, cfg.lora_targets(), cfg.save_merged) == (16, ["q_proj", "v_proj"], True)
    assert RunConfig(lora_r=8).validate().lora_targets() == "all-linear"


def test_the_default_learning_rate_depends_on_lora():
    from fastalign.config import FULL_LEARNING_RATE, LORA_LEARNING_RATE

    assert RunConfig().resolved_learning_rate() == FULL_LEARNING_RATE
    assert RunConfig(lora_r=16).resolved_learning_rate() == LORA_LEARNING_RATE > FULL_LEARNING_RATE
    assert RunConfig(lora_r=16, learning_rate=1e-4).resolved_learning_rate() == 1e-4
