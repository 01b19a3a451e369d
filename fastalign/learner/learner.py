"""The DeepSpeed learner: policy update on labelled pairs, frozen reference, weights out for the engine.

Reference log-probs are computed once per pair with the frozen reference model and stored on the pair,
so replaying a pair never pays for them again. The policy step weights pairs (ties get weight 0) and
normalises by the round's weight, which keeps the gradient scale independent of the micro-batching.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import REFERENCE_SAMPLES, RunConfig
from ..models import atomic_directory, load_causal_lm, resolve_dtype
from ..types import PreferencePair
from .algorithms import algorithm_loss
from .distributed import is_main_process
from .logprobs import build_batch, pair_logps, sequence_logps
from .losses import LossParams, SequenceLogps, preference_metrics


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    """The DeepSpeed JSON from the run flags; a user's JSON (cfg.deepspeed_config) overrides them."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": max(1, cfg.batch_size // cfg.micro_batch_size),
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": resolve_dtype(cfg.dtype) == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size
    if cfg.deepspeed_config:
        ds.update(json.loads(Path(cfg.deepspeed_config).read_text()))
    return ds


class PolicyLearner:
    """Owns the trainable policy (wrapped by DeepSpeed) and the frozen reference model."""

    def __init__(self, cfg: RunConfig, model_dir: Path, pad_id: int, world_size: int = 1):
        import deepspeed

        self.cfg = cfg
        self.pad_id = pad_id
        self.logprob_impl = cfg.resolved_logprob_impl()
        self.params = LossParams(cfg.beta, cfg.label_smoothing, cfg.simpo_gamma_ratio)
        # BPO's reference is the behaviour policy (the policy itself at the round's start): no frozen copy
        self.reference = (None if cfg.algorithm == "bpo"
                          else load_causal_lm(model_dir, cfg.dtype).eval().requires_grad_(False))
        self.label_generator = torch.Generator().manual_seed(cfg.seed * 7907 + 11)  # SAIL-PP/DP labels
        policy = load_causal_lm(model_dir, "fp32")
        policy.config.use_cache = False
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      betas=(0.9, 0.95), fused=False)
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer,
                                               config=deepspeed_config(cfg, world_size))
        skip_identity_allreduce(self.engine, cfg.zero_stage, world_size)
        check_every_step(self.engine)
        self.steps = 0
        self.skipped_steps = 0  # NaN/inf steps skipped so far

    @property
    def policy(self) -> torch.nn.Module:
        return self.engine.module

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def fill_reference_logps(self, pairs: list[PreferencePair]) -> None:
        """Reference log-probs for pairs that have none yet (each pair is scored once, ever)."""
        if self.reference is None:  # BPO: filled from the policy's own first forward of the pair
            return
        todo = [p for p in pairs if p.ref_chosen_logprob is None]
        for start in range(0, len(todo), self.cfg.micro_batch_size):
            chunk = todo[start:start + self.cfg.micro_batch_size]
            logps = self._pair_logps(self.reference, chunk)
            n = len(chunk)
            for p, c, r in zip(chunk, logps[:n].tolist(), logps[n:].tolist()):
                p.ref_chosen_logprob, p.ref_rejected_logprob = c, r

    def _pair_logps(self, model: torch.nn.Module, pairs: list[PreferencePair]) -> torch.Tensor:
        """[chosen..., rejected...] log-probs; the prompt runs once per pair when cfg.share_prompt."""
        return pair_logps(model, [p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs],
                          [p.rejected_ids for p in pairs], self.pad_id, self.logprob_impl, self.cfg.share_prompt)

    def _batch_with_reference_samples(self, pairs: list[PreferencePair]):
        """Chosen rows, rejected rows, then each pair's reference sample ỹ (SELM/XPO), in one batch."""
        prompts = [p.prompt_ids for p in pairs] * 3
        responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs] + [p.extra_ids for p in pairs]
        return build_batch(prompts, responses, self.pad_id)

    def reference_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The frozen reference's HF-named parameters, e.g. to sample ỹ ~ π_ref from the engine (SELM/XPO)."""
        if self.reference is None:
            raise RuntimeError("this learner keeps no reference model (--algorithm bpo)")
        for name, param in self.reference.named_parameters():
            yield name, param.detach()

    # ------------------------------------------------------------------ implicit reward
    @torch.no_grad()
    def implicit_rewards(self, prompt_ids: list[list[int]], responses: list[list[list[int]]]) -> np.ndarray:
        """[B, N] log π_θ(y|x) − log π_ref(y|x), summed over each response's tokens, for N responses per prompt.

        DPO's implicit reward is β times this (β is left out: rankings and argmaxes do not depend on it, as
        in oat's APL). The same log-prob path as the loss (`sequence_logps`, cfg.logprob_impl), without
        gradients, the policy in eval mode; sequences go through in chunks of 2·micro_batch_size.
        """
        if self.reference is None:
            raise RuntimeError("implicit rewards need the frozen reference model, which --algorithm bpo does not keep")
        if len(prompt_ids) != len(responses) or not responses:
            raise ValueError(f"need one list of responses per prompt, got {len(prompt_ids)} prompts and "
                             f"{len(responses)} response lists")
        width = len(responses[0])
        if width == 0 or any(len(row) != width for row in responses):
            raise ValueError(f"every prompt needs the same number (≥ 1) of responses, "
                             f"got {[len(r) for r in responses]}")
        prompts = [list(p) for p, row in zip(prompt_ids, responses) for _ in row]
        flat = [list(y) for row in responses for y in row]
        was_training = self.policy.training
        self.policy.eval()
        try:
            out = []
            step = 2 * self.cfg.micro_batch_size
            for start in range(0, len(flat), step):
                batch = build_batch(prompts[start:start + step], flat[start:start + step], self.pad_id)
                out.append(sequence_logps(self.policy, batch, impl=self.logprob_impl).float()
                           - sequence_logps(self.reference, batch, impl=self.logprob_impl).float())
        finally:
            self.policy.train(was_training)
        return torch.cat(out).cpu().numpy().astype(np.float64).reshape(len(responses), width)

    # ------------------------------------------------------------------ update
    def step(self, pairs: list[PreferencePair], weights: list[float] | None = None) -> dict[str, float]:
        """One optimiser step over the round's pairs (micro-batched); returns averaged metrics."""
        if not pairs:
            raise ValueError("learner.step needs at least one pair")
        weights = weights or [1.0] * len(pairs)
        self.fill_reference_logps(pairs)
        self.engine.train()
        total_weight = max(sum(weights), 1e-8)
        sums: dict[str, float] = {}
        chunks = range(0, len(pairs), self.cfg.micro_batch_size)
        for k, start in enumerate(chunks):
            chunk = pairs[start:start + self.cfg.micro_batch_size]
            w = torch.tensor(weights[start:start + len(chunk)], dtype=torch.float32)
            loss, metrics = self._micro_loss(chunk, w, total_weight)
            finite = _all_ranks_finite(loss.detach())
            if not finite:
                # End the round here with NaN gradients: every stage then drops the whole step, and
                # under ZeRO, DeepSpeed clears the partial sums of earlier micro-batches itself.
                loss = loss * float("nan")
            self.engine.set_gradient_accumulation_boundary(k == len(chunks) - 1 or not finite)
            self.engine.backward(loss, scale_wrt_gas=False)
            if not finite:
                break
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * len(chunk)
        if not self._finite_gradients():
            return self._skip_step()
        self.engine.step()
        if not self.engine.was_step_applied():  # ZeRO 1-3: the reduced partition held a NaN/inf
            return self._count_skip()            # gradient; DeepSpeed dropped the step and its gradients
        self.steps += 1
        out = {key: value / len(pairs) for key, value in sums.items()}
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:  # DeepSpeed reports it where it clips (bf16 / ZeRO optimizers)
            out["grad_norm"] = _finite_or_nan(grad_norm)
        out["lr"] = self.cfg.learning_rate
        return out

    def _finite_gradients(self) -> bool:
        """All gradients on the parameters finite on every rank. Only ZeRO 0 keeps them there; ZeRO 1-3
        reduce them into the optimizer's partitions, which DeepSpeed checks in engine.step()."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        ok = all(bool(torch.isfinite(g).all()) for g in grads)
        return _all_ranks_finite(torch.tensor(0.0 if ok else float("nan")))

    def _skip_step(self) -> dict[str, float]:
        """A NaN/inf loss or gradient: drop this round's gradients, leave weights and optimizer untouched."""
        self.engine.zero_grad()
        for p in self.policy.parameters():
            p.grad = None
        return self._count_skip()

    def _count_skip(self) -> dict[str, float]:
        self.skipped_steps += 1  # the loop stops the run past cfg.max_nonfinite_steps
        return {"skipped_nonfinite": 1.0, "skipped_total": float(self.skipped_steps)}

    # ------------------------------------------------------------------ checkpoint
    def save_state(self, directory: str | Path) -> None:
        """Policy, optimizer and DeepSpeed's own state (collective: call on every rank)."""
        self.engine.save_checkpoint(str(directory), tag="learner",
                                    client_state={"steps": self.steps, "nonfinite_skipped_steps": self.skipped_steps,
                                                  "label_generator": self.label_generator.get_state()})

    def load_state(self, directory: str | Path) -> None:
        path, client = self.engine.load_checkpoint(str(directory), tag="learner", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed learner checkpoint in {directory}")
        self.steps, self.skipped_steps = int(client["steps"]), int(client["nonfinite_skipped_steps"])
        self.label_generator.set_state(client["label_generator"])

    def _micro_loss(self, pairs: list[PreferencePair], w: torch.Tensor, total_weight: float):
        with_extra = self.cfg.algorithm in REFERENCE_SAMPLES
        if with_extra and any(p.extra_ids is None for p in pairs):
            raise ValueError(f"--algorithm {self.cfg.algorithm} needs a reference sample (extra_ids) on every pair")
        if with_extra:  # ỹ has its own prompt row: the three sequences go through in one plain batch
            logps = sequence_logps(self.policy, self._batch_with_reference_samples(pairs), impl=self.logprob_impl)
        else:
            logps = self._pair_logps(self.policy, pairs)
        n = len(pairs)
        if self.reference is None:  # BPO: the behaviour log-probs are this forward's, before any update
            for p, c, r in zip(pairs, logps[:n].tolist(), logps[n:2 * n].tolist()):
                if p.ref_chosen_logprob is None:
                    p.ref_chosen_logprob, p.ref_rejected_logprob = c, r
        lengths = torch.tensor([len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs],
                               dtype=torch.float32)
        seq = SequenceLogps(
            policy_chosen=logps[:n], policy_rejected=logps[n:2 * n],
            ref_chosen=torch.tensor([p.ref_chosen_logprob for p in pairs], dtype=torch.float32),
            ref_rejected=torch.tensor([p.ref_rejected_logprob for p in pairs], dtype=torch.float32),
            chosen_len=lengths[:n], rejected_len=lengths[n:])
        extra = None
        if with_extra:
            extra = (logps[2 * n:], torch.tensor([p.extra_ref_logprob for p in pairs], dtype=torch.float32))
        per_pair, seq, metrics = algorithm_loss(self.cfg, seq, self.params, extra,
                                                [p.policy_labels for p in pairs], self.label_generator)
        return (per_pair * w).sum() / total_weight, {**preference_metrics(seq, self.params, per_pair), **metrics}

    # ------------------------------------------------------------------ out
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named parameters for the generation engine (gathered first under ZeRO-3)."""
        if self.cfg.zero_stage == 3:
            import deepspeed

            for name, param in self.policy.named_parameters():
                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.data.detach().clone()
        else:
            for name, param in self.policy.named_parameters():
                yield name, param.detach()

    def save_pretrained(self, out_dir: str | Path, tokenizer=None) -> Path:
        """The policy as an HF directory (safetensors) that `from_pretrained` loads; rank 0 writes it.

        Call it on every rank: under ZeRO-3 the parameters are gathered collectively. Written to a
        temporary directory and renamed, so an interrupted save never leaves a half model behind.
        """
        out = Path(out_dir)
        state = {name: t.float().cpu() for name, t in self.named_weights()}
        if not is_main_process():
            return out
        with atomic_directory(out) as tmp:
            self.policy.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return out


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf steps (raised by the loop): the run stops instead of training on garbage."""


def _all_ranks_finite(value: torch.Tensor) -> bool:
    """Every rank takes the same skip decision, or the collective optimizer step would hang."""
    import torch.distributed as dist

    bad = torch.tensor([0.0 if bool(torch.isfinite(value).all()) else 1.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad)
    return bad.item() == 0


def skip_identity_allreduce(engine, zero_stage: int, world_size: int) -> None:
    """One rank without ZeRO: averaging gradients over a world of one is the identity, yet DeepSpeed
    still flattens, all-reduces and copies back every gradient each step (~0.5 s CPU for 135M params)."""
    if world_size == 1 and zero_stage == 0:
        engine.enable_backward_allreduce = False


def check_every_step(engine) -> None:
    """ZeRO 1/2 in fp32 look for NaN/inf gradients only when they clip (they compute the norm then);
    bf16 and ZeRO 3 always look. Make them always look, so a bad step is dropped with its gradients
    (DeepSpeed's own clean-up of its partitions) and reported by engine.was_step_applied()."""
    if hasattr(engine.optimizer, "check_grad_overflow"):
        engine.optimizer.check_grad_overflow = True


def _finite_or_nan(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")
