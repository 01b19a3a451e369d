"""Batched ensemble of reward heads: E independent MLPs d→h→h→1 (ReLU) over shared features.

features [M, d]; W1 [E, d, h], b1 [E, h], W2 [E, h, h], b2 [E, h], W3 [E, h], b3 [E] → rewards [E, M].
The SEA epistemic reward model evaluates and trains all heads at once; a Python loop over heads
(`ensemble_mlp_reference`, the definition) launches 3·E small matmuls, the torch path `EnsembleMLPTorch`
does the whole ensemble with three batched matmuls forward and a hand-written batched backward
(saving only the two ReLU activations). All arithmetic is fp32; gradients come back in input dtypes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PARAM_NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")


def ensemble_mlp_reference(features: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                           b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor) -> torch.Tensor:
    """The definition: one head at a time, rewards [E, M] in fp32."""
    x = features.float()
    out = []
    for e in range(w1.shape[0]):
        z1 = F.relu(x @ w1[e].float() + b1[e].float())
        z2 = F.relu(z1 @ w2[e].float() + b2[e].float())
        out.append(z2 @ w3[e].float() + b3[e].float())
    return torch.stack(out)


class EnsembleMLPTorch(torch.autograd.Function):
    """All heads in batched matmuls; the backward is written out so only z1, z2 [E, M, h] are saved."""

    @staticmethod
    def forward(ctx, features, w1, b1, w2, b2, w3, b3):
        x, p = features.float(), [t.float() for t in (w1, b1, w2, b2, w3, b3)]
        z1 = torch.relu(torch.matmul(x, p[0]) + p[1][:, None, :])
        z2 = torch.relu(torch.baddbmm(p[3][:, None, :], z1, p[2]))
        r = torch.bmm(z2, p[4][:, :, None]).squeeze(-1) + p[5][:, None]
        ctx.save_for_backward(features, w1, w2, w3, z1, z2)
        ctx.dtypes = [t.dtype for t in (features, w1, b1, w2, b2, w3, b3)]
        return r

    @staticmethod
    def backward(ctx, g):
        features, w1, w2, w3, z1, z2 = ctx.saved_tensors
        x, w1, w2, w3, g = features.float(), w1.float(), w2.float(), w3.float(), g.float()
        dz2 = g[:, :, None] * w3[:, None, :] * (z2 > 0)
        dw3 = torch.bmm(g[:, None, :], z2).squeeze(1)
        dz1 = torch.bmm(dz2, w2.transpose(1, 2)) * (z1 > 0)
        dw2 = torch.bmm(z1.transpose(1, 2), dz2)
        dw1 = torch.matmul(x.T, dz1)
        dx = torch.bmm(dz1, w1.transpose(1, 2)).sum(0)
        grads = (dx, dw1, dz1.sum(1), dw2, dz2.sum(1), dw3, g.sum(1))
        return tuple(gr.to(dt) for gr, dt in zip(grads, ctx.dtypes))


def ensemble_mlp_torch(features: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                       b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor) -> torch.Tensor:
    """The torch path: rewards [E, M] in fp32."""
    return EnsembleMLPTorch.apply(features, w1, b1, w2, b2, w3, b3)
