"""One pair with known log-probs, shared by the algorithm tests.

log π(y_w) = −10, log π(y_l) = −12, log π_ref(y_w) = −11, log π_ref(y_l) = −11.5, so h = 1.5; with β = 0.1,
βh = 0.15, σ(0.15) = 0.5374298453437496 and ℓ = log σ(0.15) = −0.620957047789532.
"""
from __future__ import annotations

import torch

from fastalign.config import RunConfig
from fastalign.losses import SequenceLogps
from fastalign.types import PreferencePair

SIG = 0.5374298453437496
ELL = -0.620957047789532
DPO_GRAD = -(1 - SIG) * 0.1  # ∂(−ℓ)/∂ log π(y_w); the opposite for log π(y_l)


def one_pair(w=-10.0, l=-12.0, rw=-11.0, rl=-11.5) -> SequenceLogps:
    t = lambda v: torch.tensor([v], dtype=torch.float64, requires_grad=True)  # noqa: E731
    return SequenceLogps(policy_chosen=t(w), policy_rejected=t(l), ref_chosen=t(rw), ref_rejected=t(rl),
                         chosen_len=torch.tensor([4.0]), rejected_len=torch.tensor([5.0]))


def pair_record(**kw) -> PreferencePair:
    return PreferencePair(prompt_ids=[1, 2], chosen_ids=[3], rejected_ids=[4], **kw)


def config(**kw) -> RunConfig:
    return RunConfig(**{"beta": 0.1, **kw})
