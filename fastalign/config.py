"""The one run configuration. The CLI flags, a YAML/JSON config file and the library API all map onto
`RunConfig`; `validate()` refuses a bad combination before any work starts.

The defaults are the embedded task: SmolLM2-135M-Instruct aligned online towards positive sentiment
(VADER oracle) on the packaged prompt set, sized to finish in minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import typing
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_json_atomic

ORACLES = ("vader", "rubric", "callable", "reward-model", "judge", "remote-reward")
ENGINES = ("auto", "vllm", "hf")
EXPLORERS = ("passive", "ee-ts", "bai-ts", "uncertainty", "best-worst", "best-of-n", "apl")
HEAD_DRAWS = ("batch", "prompt")  # SEA Thompson heads: one draw per round's batch (oat's default) or per prompt
MIXED_GATED_OUT = ("drop", "oracle")  # a model-label candidate the gate refuses: dropped, or asked as usual
ERM_FEATURES = ("minilm", "policy")
PREFERENCE_MODES = ("deterministic", "bt")
LOGPROB_IMPLS = ("auto", "torch", "triton", "naive")
BAD_PROMPT_MODES = ("fail", "skip")
LONG_PROMPT_MODES = ("truncate", "drop")
DTYPES = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware computes it natively
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_PROMPTS = "default"
RESUME_MODES = ("auto", "no")
FULL_LEARNING_RATE, LORA_LEARNING_RATE = 5e-5, 5e-4  # the defaults (docs/lora.md: chosen by measurement)
LORA_OPTIONS = ("lora_alpha", "lora_dropout", "lora_target_modules", "save_merged")  # used only with lora_r > 0


class ConfigError(ValueError):
    """A configuration the run refuses before doing any work; the message says how to fix it."""


@dataclass
class RunConfig:
    # --- run ---
    output_dir: str = "runs/default"
    seed: int = 0
    threads: int = 0  # 0 = all cores of this machine (per rank)
    # --- model and prompts ---
    model: str = DEFAULT_MODEL  # an HF causal-LM directory, or the packaged default's name
    prompts: str = DEFAULT_PROMPTS  # JSONL file, `datasets` directory, or "default"
    eval_prompts: str | None = None  # defaults to the held-out split of the default set
    prompt_field: str = "prompt"
    max_prompt_tokens: int = 96
    on_bad_prompt: str = "fail"  # a malformed prompt row: fail with its file:line, or skip it (counted)
    on_long_prompt: str = "truncate"  # a prompt over max_prompt_tokens: truncate or drop it (counted)
    num_eval_prompts: int = 64
    # --- generation engine ---
    engine: str = "auto"
    samples_per_prompt: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    engine_dtype: str = "auto"
    kv_cache_gib: float = 1.0
    engine_compile: bool = False  # vLLM compiled mode: slower start (minutes on 2 cores), faster generation
    # --- oracle ---
    oracle: str = "vader"
    oracle_path: str | None = None  # "module:function" for callable, a directory for reward-model/judge
    judge_instruction: str | None = None
    preference: str = "deterministic"
    bt_temperature: float = 1.0
    oracle_retries: int = 3  # retries of a failed/timed-out oracle call (exponential back-off) before failing
    oracle_timeout: float | None = None  # seconds per oracle call; None = wait forever
    oracle_backoff: float = 1.0  # seconds before the first retry; doubles each time
    # served oracles (docs/oracles.md): every rank sends its queries to the same server
    judge_url: str | None = None  # --oracle judge served by an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1
    judge_model: str | None = None  # the model name that server serves (its GET /v1/models lists them)
    judge_endpoint: str = "chat"  # chat: the server applies the model's chat template; completions: a plain prompt
    reward_url: str | None = None  # --oracle remote-reward: POST endpoint speaking OpenRLHF's remote reward JSON
    oracle_concurrency: int = 8  # concurrent requests to the judge server, per rank
    oracle_api_key_env: str = "FASTALIGN_ORACLE_API_KEY"  # NAME of the environment variable holding the API key
    # --- exploration ---
    explore: str = "passive"  # or a SEA rule over the epistemic reward model's samples
    erm_heads: int = 20
    erm_features: str = "minilm"  # or "policy": the frozen initial policy's last hidden state (no extra model)
    mixed_share: float = 0.0  # SEA mixed preference learning: share of prompts labelled by the reward model
    mixed_burn_in: int = 32  # oracle queries before the reward model labels any pair itself
    eval_best_of_n: int = 0  # >0: also judge the best of N sampled responses by the reward model's mean
    # --- exploration: diagnostics, mixed-preference gate, Thompson draws, APL (docs/exploration.md) ---
    head_draws: str = "batch"  # ee-ts/bai-ts heads: one draw per round's batch (as oat) or one per prompt
    erm_window: int = 32  # oracle pairs in the recent prequential accuracy (logged; the mixed gate reads it)
    mixed_min_confidence: float = 0.9  # gate (i): the ensemble's P(label) = mean over heads of σ(margin) needed
    mixed_min_accuracy: float = 0.6  # gate (ii): recent prequential accuracy needed (0 = no such condition)
    mixed_gated_out: str = "oracle"  # a refused candidate: asked with the rule's own pair, or "drop"ped (not asked)
    apl_pool_factor: int = 4  # APL: prompts drawn per round = factor × batch_size; the top-entropy batch is kept
    # --- algorithm (fastalign/algorithms/: one module each, formulas and papers) ---
    algorithm: str = "online-dpo"  # online-dpo, offline-dpo, selm, xpo, bpo, sail-pr, sail-pp, sail-dp
    updates_per_round: int | None = None  # optimiser steps per collected batch; None = the algorithm's (1; bpo 4)
    selm_alpha: float = 1e-3  # SELM: loss += α·β·(log π(ỹ) − log π_ref(ỹ)), ỹ from π_ref
    selm_response: str = "sample"  # SELM's ỹ: "sample" from π_ref (the paper), or "greedy" (the authors' code)
    xpo_alpha: float = 1e-5  # XPO: loss += α·log π(ỹ) on the judged reference sample ỹ
    sail_share: float | None = None  # SAIL: share of pairs with its extra terms; None = the authors' example
    sail_coef: float | None = None  # SAIL: coefficient λ of those terms; None = the authors' example
    sail_sampling: str = "exact"  # SAIL sampling term: "exact" score-function gradient, or "authors" (released code)
    chosen_field: str = "chosen"  # sail-dp: the prompt set's fields holding each row's preference pair
    rejected_field: str = "rejected"
    # --- learner ---
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma_ratio: float = 0.5
    discopop_tau: float = 0.05
    learning_rate: float | None = None  # None = 5e-5 for full fine-tuning, LORA_LEARNING_RATE with LoRA
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8  # prompts per round = oracle queries per round
    micro_batch_size: int = 8  # pairs per forward/backward
    dtype: str = "auto"
    share_prompt: bool = True  # run a pair's prompt once; chosen and rejected continue from its KV cache
    logprob_impl: str = "auto"  # LM head + loss: torch (chunked) / triton or naive; auto: torch, naive at ZeRO-3
    zero_stage: int = 0
    deepspeed_config: str | None = None  # a DeepSpeed JSON; overrides the flags it sets
    # LoRA through peft (docs/lora.md): the reference is the base with the adapter off, sync sends merged tensors
    lora_r: int = 0  # adapter rank; 0 = full fine-tuning
    lora_alpha: float = 32.0  # the adapter's update is (alpha / r)·B·A
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"  # comma-separated module names (q_proj,v_proj) or all-linear
    save_merged: bool = False  # with LoRA, also write output_dir/final_merged/: the base with the adapter merged in
    # --- loop ---
    rounds: int = 20
    max_queries: int | None = None  # oracle queries over all ranks, a hard cap: the last round asks what is left
    time_budget_minutes: float | None = None
    eval_every: int = 5
    save_final: bool = True
    tensorboard: bool = True
    progress: bool = True
    dry_run: bool = False  # check the options, prompts and oracle, print what would run, load no model
    # --- reliability ---
    checkpoint_every: int = 10  # rounds between checkpoints (0 = only on SIGTERM/SIGINT, faults and the end)
    keep_checkpoints: int = 2  # the newest K complete checkpoints are kept
    resume: str = "auto"  # "auto": continue output_dir's run if it has one; "no": a fresh run only; or a checkpoint dir
    max_nonfinite_steps: int = 10  # NaN/inf loss or gradient steps skipped before the run stops

    # ------------------------------------------------------------------ validation
    def _choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")

    def validate(self) -> "RunConfig":
        self._validate_loss()
        self._validate_algorithm()
        self._choice("oracle", ORACLES)
        self._choice("engine", ENGINES)
        if self.engine_compile and self.engine == "hf":
            raise ConfigError("engine_compile is vLLM's compiled mode: use --engine vllm (or auto), or drop --engine_compile")
        self._choice("explore", EXPLORERS)
        self._choice("erm_features", ERM_FEATURES)
        if not 0 <= self.mixed_share < 1:
            raise ConfigError(f"mixed_share must be in [0, 1), got {self.mixed_share}")
        sea_only = {"mixed_share": self.mixed_share > 0, "eval_best_of_n": self.eval_best_of_n != 0}
        for name, used in sea_only.items():
            if used and self.explore == "passive":
                raise ConfigError(f"--{name} needs the epistemic reward model: pick a SEA --explore "
                                  f"(ee-ts, bai-ts, uncertainty, best-worst, best-of-n), not passive")
        if self.eval_best_of_n == 1 or self.eval_best_of_n < 0:
            raise ConfigError(f"eval_best_of_n must be 0 (off) or ≥ 2, got {self.eval_best_of_n}")
        if self.mixed_burn_in < 0:
            raise ConfigError(f"mixed_burn_in must be ≥ 0, got {self.mixed_burn_in}")
        if self.erm_heads < 1:
            raise ConfigError(f"erm_heads must be ≥ 1, got {self.erm_heads}")
        self._choice("preference", PREFERENCE_MODES)
        self._choice("dtype", DTYPES)
        self._choice("engine_dtype", DTYPES)
        self._choice("logprob_impl", LOGPROB_IMPLS)
        self._choice("on_bad_prompt", BAD_PROMPT_MODES)
        self._choice("on_long_prompt", LONG_PROMPT_MODES)
        positive = ("batch_size", "micro_batch_size", "max_new_tokens", "rounds", "eval_every",
                    "max_prompt_tokens", "num_eval_prompts")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "bt_temperature", "kv_cache_gib"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0 (or omitted for the default), got {self.learning_rate}")
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt must be ≥ 2 to form a pair, got {self.samples_per_prompt}")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for sampling (use eval for greedy responses)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.logprob_impl == "triton" and not _triton_can_run():
            raise ConfigError("--logprob_impl triton runs fastalign's Triton kernels, which need a CUDA device "
                              "(or Triton's interpreter, TRITON_INTERPRET=1, for tests): use auto or torch here")
        if self.logprob_impl in ("torch", "triton") and self.zero_stage == 3:
            raise ConfigError(f"--logprob_impl {self.logprob_impl} needs the whole LM head; ZeRO-3 partitions it: "
                              "use --logprob_impl naive (or auto) with --zero_stage 3")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        self._validate_oracle_service()
        if self.oracle in ("callable", "reward-model", "judge") and not self.oracle_path and not self.judge_url:
            raise ConfigError(f"--oracle {self.oracle} needs --oracle_path "
                              + ("module:function" if self.oracle == "callable" else "DIR"))
        if self.oracle in ("vader", "rubric") and self.oracle_path:
            raise ConfigError(f"--oracle_path is not used by the {self.oracle} oracle; drop it or pick another --oracle")
        if self.judge_instruction is not None and self.oracle != "judge":
            raise ConfigError("--judge_instruction applies only to --oracle judge")
        if self.model != DEFAULT_MODEL and not Path(self.model).is_dir():
            raise ConfigError(f"model directory not found: {self.model!r} "
                              f"(give an HF model directory, or {DEFAULT_MODEL!r} for the packaged default)")
        for name in ("prompts", "eval_prompts"):
            value = getattr(self, name)
            if value not in (None, DEFAULT_PROMPTS) and not Path(value).exists():
                raise ConfigError(f"{name} not found: {value!r} (a JSONL file, a `datasets` directory, "
                                  f"or {DEFAULT_PROMPTS!r})")
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            raise ConfigError(f"deepspeed_config not found: {self.deepspeed_config!r}")
        self._validate_reliability()
        self._validate_exploration()
        self._validate_lora()
        if self.max_queries is not None and self.max_queries < self.batch_size:
            raise ConfigError(f"max_queries ({self.max_queries}) is below one round's batch_size ({self.batch_size})")
        return self

    def _validate_reliability(self) -> None:
        for name in ("checkpoint_every", "oracle_retries", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be ≥ 1 (the newest is what --resume needs), "
                              f"got {self.keep_checkpoints}")
        if self.oracle_timeout is not None and not self.oracle_timeout > 0:
            raise ConfigError(f"oracle_timeout must be > 0 seconds (omit it to wait forever), got {self.oracle_timeout}")
        if self.oracle_backoff < 0:
            raise ConfigError(f"oracle_backoff must be ≥ 0 seconds, got {self.oracle_backoff}")
        if self.resume not in RESUME_MODES and not Path(self.resume).is_dir():
            raise ConfigError(f"--resume {self.resume!r}: no such directory (give a checkpoint directory, a "
                              "directory of checkpoints, 'auto' to continue output_dir's run, or 'no')")

    def _validate_lora(self) -> None:
        """LoRA options apply only with lora_r > 0; the adapter must leave the LM head and embeddings whole
        (the fused log-prob path reads the head's weight; SmolLM2-like models tie it to the embeddings)."""
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be ≥ 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.lora_r == 0:
            defaults = RunConfig.__dataclass_fields__
            changed = [name for name in LORA_OPTIONS if getattr(self, name) != defaults[name].default]
            if changed:
                raise ConfigError(f"--{changed[0]} applies only to LoRA: add --lora_r (e.g. 16), or drop it")
            return
        if not self.lora_alpha > 0:
            raise ConfigError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        targets = self.lora_targets()
        names = [] if targets == "all-linear" else targets
        if not targets or any(not re.fullmatch(r"[A-Za-z_][\w.]*", t) for t in names):
            raise ConfigError(f"lora_target_modules {self.lora_target_modules!r}: give comma-separated module names "
                              "(e.g. q_proj,k_proj,v_proj,o_proj) or all-linear")
        whole = sorted(set(names) & {"lm_head", "embed_tokens"})
        if whole:
            raise ConfigError(f"lora_target_modules may not include {', '.join(whole)}: the learner reads the LM head's "
                              "weight directly and tied models share it with the embeddings; adapt the decoder's "
                              "linear layers (all-linear leaves both out)")
        if self.zero_stage == 3:
            raise ConfigError("LoRA with --zero_stage 3 is not supported: ZeRO-3 partitions the base weights, which the "
                              "merged weight sync needs whole (and the adapter's optimizer state is small anyway): "
                              "use --zero_stage 0, 1 or 2")

    def lora_targets(self) -> list[str] | str:
        """peft's target_modules: a list of module names, or the string "all-linear"."""
        if self.lora_target_modules.strip() == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.lora_target_modules.split(",") if t.strip()]

    def _validate_loss(self) -> None:
        from .losses import LOSSES, loss_spec

        try:
            spec = loss_spec(self.loss)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if spec.smoothing == "required" and self.label_smoothing == 0:
            raise ConfigError(f"--loss {self.loss} needs --label_smoothing > 0 (e.g. 0.1)")
        if spec.smoothing == "unused" and self.label_smoothing > 0:
            takes = ", ".join(name for name, s in LOSSES.items() if s.smoothing != "unused")
            raise ConfigError(f"label_smoothing applies to --loss {takes}; not to {self.loss!r}")
        if not self.discopop_tau > 0:
            raise ConfigError(f"discopop_tau must be > 0, got {self.discopop_tau}")

    def _validate_oracle_service(self) -> None:
        """Served oracles: a URL that is the right kind, for the oracle that uses it, and no secret in the config."""
        if self.judge_url is not None and self.oracle != "judge":
            raise ConfigError(f"--judge_url applies to --oracle judge, not {self.oracle!r}")
        if self.reward_url is not None and self.oracle != "remote-reward":
            raise ConfigError(f"--reward_url applies to --oracle remote-reward, not {self.oracle!r}")
        if self.oracle == "judge" and self.judge_url and self.oracle_path:
            raise ConfigError("--oracle judge takes either --oracle_path DIR (a local judge model) or --judge_url "
                              "URL (a served judge), not both: drop one of them")
        if (self.judge_url is None) != (self.judge_model is None):
            raise ConfigError("a served judge needs both --judge_url (e.g. http://127.0.0.1:8000/v1) and --judge_model "
                              "(a name the server lists at GET /v1/models)")
        if self.judge_endpoint not in ("chat", "completions"):
            raise ConfigError(f"unknown judge_endpoint {self.judge_endpoint!r}: choose chat (the server applies the "
                              "model's chat template) or completions (a plain prompt, for models without one)")
        if self.oracle == "remote-reward" and (not self.reward_url or self.oracle_path):
            raise ConfigError("--oracle remote-reward needs --reward_url URL (and no --oracle_path)")
        for name in ("judge_url", "reward_url"):
            if getattr(self, name) is not None:
                try:
                    check_service_url(getattr(self, name), name)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
        if self.oracle_concurrency < 1:
            raise ConfigError(f"oracle_concurrency must be ≥ 1, got {self.oracle_concurrency}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.oracle_api_key_env or ""):
            raise ConfigError("--oracle_api_key_env takes the NAME of an environment variable that holds the key "
                              "(e.g. OPENAI_API_KEY), not the key itself; the key is never written to the run")

    def _validate_exploration(self) -> None:
        """Prequential window, mixed-preference gate, Thompson head draws and APL (docs/exploration.md)."""
        self._choice("head_draws", HEAD_DRAWS)
        self._choice("mixed_gated_out", MIXED_GATED_OUT)
        if self.erm_window < 1:
            raise ConfigError(f"erm_window must be ≥ 1 oracle pair, got {self.erm_window}")
        for name in ("mixed_min_confidence", "mixed_min_accuracy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1] (a probability), got {getattr(self, name)}")
        if self.apl_pool_factor < 1:
            raise ConfigError(f"apl_pool_factor must be ≥ 1 (1 = no prompt selection, as oat), "
                              f"got {self.apl_pool_factor}")
        if self.explore != "apl":
            return
        for name, used in {"mixed_share": self.mixed_share > 0, "eval_best_of_n": self.eval_best_of_n != 0}.items():
            if used:
                raise ConfigError(f"--{name} needs the epistemic reward model, which --explore apl does not keep "
                                  "(it ranks with the policy's implicit reward): pick a SEA --explore or drop it")
        from .algorithms import algorithm_class

        if not algorithm_class(self.algorithm).frozen_reference:
            raise ConfigError(f"--explore apl ranks pairs by log π_θ − log π_ref, and --algorithm {self.algorithm} "
                              "keeps no frozen reference: use another --algorithm or --explore")

    def _validate_algorithm(self) -> None:
        from .algorithms import algorithm_class

        for name in ("selm_alpha", "xpo_alpha"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.updates_per_round is not None and self.updates_per_round < 1:
            raise ConfigError(f"updates_per_round must be ≥ 1 (or omitted for the algorithm's own), "
                              f"got {self.updates_per_round}")
        algorithm_class(self.algorithm).check(self)

    # ------------------------------------------------------------------ I/O
    def resolved_learning_rate(self) -> float:
        """The learning rate given, else the default: an adapter needs about ten times full fine-tuning's."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora_r > 0 else FULL_LEARNING_RATE

    def resolved_logprob_impl(self) -> str:
        """auto → naive under ZeRO-3, else the fused ops' own choice (the torch path; see fastalign.ops)."""
        if self.logprob_impl == "auto" and self.zero_stage == 3:
            return "naive"
        return self.logprob_impl

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; see `fastalign train --help`")
        return cls(**{k: _coerce(cls, k, v) for k, v in data.items()})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {str(path)!r}")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # the parser's own message names line and column
            raise ConfigError(f"cannot parse config file {str(path)!r}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value")
        return cls.from_dict(data, source=str(path))


def check_service_url(url: str, option: str) -> str:
    """An http(s) URL without credentials in it (they would end up in config.json and the logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--{option} {url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"--{option} holds credentials (user:password@): they would be written to config.json; "
                         "drop them from the URL and put the API key in the environment variable named by "
                         "--oracle_api_key_env")
    return url.rstrip("/")


def _triton_can_run() -> bool:
    import importlib.util

    import torch

    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _field_type(cls: type, name: str) -> typing.Any:
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _coerce(cls: type, name: str, value: typing.Any) -> typing.Any:
    """Accept YAML/CLI values of the right type; refuse the rest with the option's name."""
    if value is None:
        return None
    tp = _field_type(cls, name)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name}: expected {tp.__name__}, got {value!r}") from None


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastalign train", description="Online preference alignment (see README for the embedded default).")
    parser.add_argument("--config", help="YAML or JSON file of options; flags given here override it")
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        tp = _field_type(RunConfig, f.name)
        metavar = "BOOL" if tp is bool else tp.__name__.upper()
        flag = dict(nargs="?", const="true") if tp is bool else {}  # a bare --dry_run means true
        parser.add_argument(f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            metavar=metavar, help=f"(default: {getattr(defaults, f.name)!r})", **flag)
    return parser


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """CLI → RunConfig: file values first, then explicit flags; validated."""
    args = build_arg_parser().parse_args(argv)
    data: dict = {}
    if args.config:
        data.update(RunConfig.from_file(args.config).to_dict())
    data.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return RunConfig.from_dict(data).validate()
