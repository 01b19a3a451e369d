"""Fused kernels of fastalign (imported as `fastalign.kernels`); the public, validated API is `fastalign.ops`.

Each op has a plain-torch reference (the definition), a torch path and Triton kernels:
- linear_logprobs / linear_logprobs_triton: per-token log-probs (+ entropy) through the LM head without
  [tokens × vocab] logits;
- sequence_loss: the learner's hidden states → loss (streamed torch path; composed for reference and Triton);
- ensemble_mlp / ensemble_mlp_triton: E batched reward-head MLPs, forward and backward in one op;
- compile_cache: optional cached torch.compile of the torch paths; triton_runtime: compiled vs interpreted.
"""
