"""The SEA epistemic reward model: an anchored ensemble of E small MLP reward heads on frozen features.

Each head r_e(φ) = W3·relu(W2ᵀ relu(W1ᵀ φ + b1) + b2) + b3 (d → 128 → 128 → 1) is one Thompson
sample of the reward; their spread is the model's epistemic uncertainty, which the pair-selection rules
(`selection.select_pairs`) turn into exploration. All heads run as ONE batched op,
`fastalign.ops.ensemble_mlp` (Triton on GPU, batched matmuls with a hand-written backward on CPU;
`impl` picks one), on parameters stored as [E, ...] tensors (W1 [E,d,h], b1 [E,h], W2 [E,h,h],
b2 [E,h], W3 [E,h], b3 [E]).

Objective per Adam step, on a minibatch of B pairs drawn without replacement from the replay buffer
(as in the SEA paper's code, sail-sg/oat, `EnnEETS.learn` and `EnsembleModel.regularization`):

    mean_{e,b} −log σ(r_e(φ_w) − r_e(φ_l))  +  λ · (B / N) · mean_{all params}((θ − θ₀)²)

N is the number of labelled pairs added so far (oat: total queries), so the pull towards each head's
own initialisation θ₀ (the anchor, a sample from the prior) fades as data accumulates, like a Gaussian
prior in a posterior whose likelihood grows with N: heads agree where there is data and keep their
independent prior guesses elsewhere. The mean runs over every parameter element of every head (oat
concatenates all parameters). Also as in oat: weights start truncated-normal (±2σ, σ = 1/(2√fan_in)),
biases at zero, Adam lr 1e-3 with weight decay 5e-5, 5 steps per round, batch 128, replay 50 000.
One deliberate difference: oat skips the update while the buffer holds fewer pairs than the batch;
here the batch is min(batch_size, buffer size) and B in the regulariser is that actual size, so small
online batches train from the first round.

Threads: the heads' matmuls are too small to amortise a parallel region, and on a loaded 2-core
machine a 2-thread pool spin-waits (measured 25× slower than 1 thread), so training and inference run
with `threads` torch threads (default 1; None leaves the process setting) and restore the count after.

Library use, without the trainer:

    rm = EpistemicRewardModel(feature_dim=384, seed=0)
    rm.add_pairs(phi_chosen, phi_rejected)           # [B, d] tensors of labelled pairs
    rm.predict_pairs(phi_a, phi_b)                   # P(a ≻ b), margins, head agreement: before training
    stats = rm.update()                              # {"loss": ..., "train_accuracy": ...}
    R = rm.reward_samples(phi_candidates)            # [B, N, d] → np.ndarray [B, N, E]
    pairs = select_pairs(R, ids, strategy="ee-ts", seed=0).pairs
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ensemble_mlp
from ..threads import using_threads

PARAM_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")
_INFER_ROWS = 4096  # rows per forward at inference: bounds the [E, rows, h] activations


class EnsembleMLP(nn.Module):
    """E independent heads d → hidden → hidden → 1, parameters in the [E, ...] layout of `ops.ensemble_mlp`."""

    def __init__(self, feature_dim: int, num_heads: int, hidden: int, generator: torch.Generator,
                 impl: str = "auto") -> None:
        super().__init__()
        self.impl = impl
        E, d, h = num_heads, feature_dim, hidden
        self.W1 = nn.Parameter(_trunc_normal((E, d, h), d, generator))
        self.b1 = nn.Parameter(torch.zeros(E, h))
        self.W2 = nn.Parameter(_trunc_normal((E, h, h), h, generator))
        self.b2 = nn.Parameter(torch.zeros(E, h))
        self.W3 = nn.Parameter(_trunc_normal((E, h), h, generator))
        self.b3 = nn.Parameter(torch.zeros(E))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[M, d] → [E, M] rewards."""
        return ensemble_mlp(x, *(getattr(self, n) for n in PARAM_NAMES), impl=self.impl)


def _trunc_normal(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    std = 1.0 / (2.0 * math.sqrt(fan_in))
    return nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std, generator=generator)


class ReplayBuffer:
    """FIFO store of labelled feature pairs [n, 2, d] (chosen, rejected); oldest pairs go first when full."""

    def __init__(self, capacity: int, feature_dim: int) -> None:
        self.capacity, self.feature_dim = capacity, feature_dim
        self.data = torch.zeros(0, 2, feature_dim)
        self.next = 0  # write position once full

    def __len__(self) -> int:
        return self.data.shape[0]

    def add(self, pairs: torch.Tensor) -> None:
        pairs = pairs[-self.capacity:]
        room = self.capacity - len(self)
        if room > 0:
            self.data = torch.cat([self.data, pairs[:room]])
            pairs = pairs[room:]
        for start in range(0, pairs.shape[0], self.capacity):
            chunk = pairs[start:start + self.capacity]
            idx = (self.next + torch.arange(chunk.shape[0])) % self.capacity
            self.data[idx] = chunk
            self.next = int((self.next + chunk.shape[0]) % self.capacity)

    def sample(self, size: int, generator: torch.Generator) -> torch.Tensor:
        return self.data[torch.randperm(len(self), generator=generator)[:size]]


@dataclass(frozen=True)
class PairPrediction:
    """The ensemble's view of B pairs (a, b), from the per-head margins m[e, i] = r_e(a_i) − r_e(b_i).

    correct-if-a-wins uses the mean head (ties ½); prob is the ensemble's Bradley–Terry probability
    P(a ≻ b) = mean_e σ(m[e, i]); agreement is the share of heads preferring a (ties ½); spread is the
    population std over heads of the margin (the ensemble's disagreement, 0 for one head).
    """

    mean_margin: np.ndarray  # [B] mean_e m[e, i]
    prob: np.ndarray  # [B] mean_e σ(m[e, i])
    agreement: np.ndarray  # [B] mean_e [m > 0] + ½[m = 0]
    spread: np.ndarray  # [B] std_e m[e, i] (ddof 0)

    @classmethod
    def from_margins(cls, margins: np.ndarray) -> "PairPrediction":
        m = np.asarray(margins, dtype=np.float64)
        if m.ndim != 2:
            raise ValueError(f"margins must be [E, B] (heads, pairs), got shape {m.shape}")
        return cls(mean_margin=m.mean(0), prob=(0.5 * (1.0 + np.tanh(0.5 * m))).mean(0),
                   agreement=((m > 0) + 0.5 * (m == 0)).mean(0), spread=m.std(0))

    def a_correct(self) -> np.ndarray:
        """[B] 1 where the mean head prefers a, 0 where it prefers b, ½ on a tie."""
        return (self.mean_margin > 0) + 0.5 * (self.mean_margin == 0)


class EpistemicRewardModel:
    """Anchored reward ensemble trained online on labelled pairs; see the module docstring."""

    def __init__(self, feature_dim: int, num_heads: int = 20, hidden: int = 128, lr: float = 1e-3,
                 anchor_lambda: float = 0.5, train_steps_per_round: int = 5, batch_size: int = 128,
                 replay_capacity: int = 50_000, seed: int = 0, weight_decay: float = 5e-5,
                 device: str | torch.device = "cpu", threads: int | None = 1, impl: str = "auto") -> None:
        _check_config(feature_dim, num_heads, hidden, lr, anchor_lambda, train_steps_per_round, batch_size,
                      replay_capacity, weight_decay)
        self.config = dict(feature_dim=feature_dim, num_heads=num_heads, hidden=hidden, lr=lr,
                           anchor_lambda=anchor_lambda, train_steps_per_round=train_steps_per_round,
                           batch_size=batch_size, replay_capacity=replay_capacity, seed=seed,
                           weight_decay=weight_decay)
        self.device = torch.device(device)
        self.threads = threads
        init_gen = torch.Generator().manual_seed(seed)
        self.net = EnsembleMLP(feature_dim, num_heads, hidden, init_gen, impl).to(self.device)
        self.anchors = {n: p.detach().clone() for n, p in self.net.named_parameters()}
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.replay = ReplayBuffer(replay_capacity, feature_dim)
        self.sample_gen = torch.Generator().manual_seed(seed + 1)
        self.pairs_seen = 0  # N of the regulariser: every labelled pair ever added
        self.steps = 0

    @property
    def num_heads(self) -> int:
        return self.config["num_heads"]

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def rewards(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[M, d] → [E, M] rewards of every head (float32, on CPU)."""
        x = self._features(features, ndim=2, name="features")
        with using_threads(self.threads):
            out = [self.net(x[i:i + _INFER_ROWS]) for i in range(0, x.shape[0], _INFER_ROWS)]
        return torch.cat(out, dim=1).cpu() if out else torch.zeros(self.num_heads, 0)

    def reward_samples(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """[B, N, d] → R [B, N, E] float32, the input of `selection.select_pairs`."""
        x = self._features(features, ndim=3, name="features")
        B, N, _ = x.shape
        r = self.rewards(x.reshape(B * N, -1))
        return np.ascontiguousarray(r.T.reshape(B, N, self.num_heads).numpy(), dtype=np.float32)

    @torch.no_grad()
    def predict_pairs(self, phi_a: torch.Tensor | np.ndarray, phi_b: torch.Tensor | np.ndarray) -> PairPrediction:
        """What the ensemble says about a ≻ b for each of B pairs [B, d] (see `PairPrediction`).

        Called on newly labelled pairs *before* `add_pairs`/`update`, this is the model's honest
        (prequential) prediction: it has never trained on them. The mixed-preference gate reads the same
        quantities on the pairs it would label itself.
        """
        a, b = self._pair(phi_a, phi_b)
        return PairPrediction.from_margins((self.rewards(a) - self.rewards(b)).double().numpy())

    @torch.no_grad()
    def accuracy(self, phi_w: torch.Tensor | np.ndarray, phi_l: torch.Tensor | np.ndarray) -> float:
        """Share of pairs where the ensemble-mean reward prefers the chosen response (ties count ½)."""
        w, l = self._pair(phi_w, phi_l)
        return _mean_accuracy(self.rewards(w), self.rewards(l))

    # ------------------------------------------------------------------ training

    def add_pairs(self, phi_chosen: torch.Tensor | np.ndarray, phi_rejected: torch.Tensor | np.ndarray) -> None:
        """Store labelled pairs [B, d] in the replay buffer; they count towards N from now on."""
        w, l = self._pair(phi_chosen, phi_rejected)
        self.replay.add(torch.stack([w, l], dim=1).detach().float().cpu())
        self.pairs_seen += w.shape[0]

    def objective(self, phi_w: torch.Tensor, phi_l: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training loss on one minibatch, split into its preference and anchor terms."""
        scores = self.net(torch.cat([phi_w, phi_l]).to(self.device))
        chosen, rejected = scores.split(phi_w.shape[0], dim=1)
        pref = -F.logsigmoid(chosen - rejected).mean()
        reg_weight = self.config["anchor_lambda"] * phi_w.shape[0] / max(self.pairs_seen, 1)
        reg = self.anchor_distance()
        return {"loss": pref + reg_weight * reg, "pref": pref, "reg": reg,
                "reg_weight": torch.tensor(reg_weight), "chosen": chosen, "rejected": rejected}

    def anchor_distance(self) -> torch.Tensor:
        """mean((θ − θ₀)²) over every parameter element of every head."""
        total = sum(((p - self.anchors[n]) ** 2).sum() for n, p in self.net.named_parameters())
        return total / sum(p.numel() for p in self.net.parameters())

    def update(self) -> dict[str, float]:
        """One round of training: `train_steps_per_round` Adam steps on replay minibatches.

        Returns the mean loss over the steps, the last minibatch's ensemble-mean accuracy and the
        anchor term; NaNs (and steps = 0) while the buffer is empty. `train_accuracy` is measured on
        pairs the model has just trained on, so it says little about new pairs: the honest figure is the
        prequential accuracy of `predict_pairs` on pairs before they are added.
        """
        if len(self.replay) == 0:
            return {"loss": math.nan, "train_accuracy": math.nan, "reg": math.nan, "reg_weight": math.nan, "steps": 0}
        size = min(self.config["batch_size"], len(self.replay))
        losses = []
        with using_threads(self.threads):
            for _ in range(self.config["train_steps_per_round"]):
                batch = self.replay.sample(size, self.sample_gen).to(self.device)
                terms = self.objective(batch[:, 0], batch[:, 1])
                self.optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                self.optimizer.step()
                self.steps += 1
                losses.append(float(terms["loss"].detach()))
        return {"loss": float(np.mean(losses)),
                "train_accuracy": _mean_accuracy(terms["chosen"].detach(), terms["rejected"].detach()),
                "reg": float(terms["reg"].detach()), "reg_weight": float(terms["reg_weight"]),
                "steps": len(losses)}

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (tensors on CPU)."""
        return {"config": dict(self.config),
                "params": {n: p.detach().cpu().clone() for n, p in self.net.named_parameters()},
                "anchors": {n: a.cpu().clone() for n, a in self.anchors.items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not live moments
                "replay": {"data": self.replay.data.clone(), "next": self.replay.next},
                "sample_gen": self.sample_gen.get_state(),
                "pairs_seen": self.pairs_seen, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shape_keys = ("feature_dim", "num_heads", "hidden", "replay_capacity")
        mismatch = {k: (state["config"][k], self.config[k]) for k in shape_keys if state["config"][k] != self.config[k]}
        if mismatch:
            raise ValueError(f"checkpoint does not fit this reward model (saved, current): {mismatch}; "
                             "build the model with the checkpoint's settings")
        with torch.no_grad():
            for n, p in self.net.named_parameters():
                p.copy_(state["params"][n])
        self.anchors = {n: a.to(self.device).clone() for n, a in state["anchors"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.data = state["replay"]["data"].clone()
        self.replay.next = int(state["replay"]["next"])
        self.sample_gen.set_state(state["sample_gen"])
        self.pairs_seen, self.steps = int(state["pairs_seen"]), int(state["steps"])

    # ------------------------------------------------------------------ input checks

    def _features(self, x: torch.Tensor | np.ndarray, ndim: int, name: str) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != ndim or x.shape[-1] != self.feature_dim:
            want = "[M, d]" if ndim == 2 else "[B, N, d]"
            raise ValueError(f"{name} must be {want} with d = {self.feature_dim}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        return x.to(self.device, torch.float32)

    def _pair(self, w: torch.Tensor | np.ndarray, l: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        w, l = self._features(w, 2, "chosen features"), self._features(l, 2, "rejected features")
        if w.shape != l.shape:
            raise ValueError(f"chosen and rejected features differ in shape: {tuple(w.shape)} vs {tuple(l.shape)}")
        return w, l


def _mean_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """chosen/rejected [E, B] rewards → accuracy of the ensemble mean, ties ½."""
    if chosen.shape[1] == 0:
        return math.nan
    diff = chosen.mean(0) - rejected.mean(0)
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def _check_config(feature_dim: int, num_heads: int, hidden: int, lr: float, anchor_lambda: float,
                  steps: int, batch_size: int, capacity: int, weight_decay: float) -> None:
    positive = {"feature_dim": feature_dim, "num_heads": num_heads, "hidden": hidden,
                "train_steps_per_round": steps, "batch_size": batch_size, "replay_capacity": capacity}
    bad = {k: v for k, v in positive.items() if int(v) != v or v < 1}
    if bad:
        raise ValueError(f"these reward-model settings must be positive integers: {bad}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if anchor_lambda < 0 or weight_decay < 0:
        raise ValueError(f"anchor_lambda and weight_decay must be ≥ 0, got {anchor_lambda}, {weight_decay}")
