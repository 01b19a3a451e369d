"""The OAIF pairwise question and its two-order arithmetic, shared by the local and the served judge.

Both judges ask exactly this: the instruction, the request, two responses labelled A and B, and a
one-letter answer. Each pair is asked in both orders and combined as
P(a ≻ b) = ½(P_A(a, b) + P_B(b, a)) = ½ + ½(P_A(a, b) − P_A(b, a)), so P(a ≻ b) + P(b ≻ a) = 1 exactly
and identical responses tie at exactly 0.5 (position bias cancels).
"""
from __future__ import annotations

import numpy as np

DEFAULT_INSTRUCTION = (
    "You are an impartial judge. Compare the two responses to the user's request below and decide "
    "which one is more helpful: it follows the request, is accurate, clear and useful.")

PAIR_TEMPLATE = (
    "{instruction}\n\n"
    "[Request]\n{prompt}\n\n"
    "[Response A]\n{first}\n\n"
    "[Response B]\n{second}\n\n"
    "Which response is better? Answer with a single letter: A or B.")

LETTERS = ("A", "B")

# Appended to the question where no chat template frames the answer (a base model, a completions endpoint).
PLAIN_ANSWER_CUE = "\nAnswer:"


def judge_instruction(instruction: str | None) -> str:
    """The criterion sentence: the default, or the user's own (refused when blank)."""
    if instruction is None:
        return DEFAULT_INSTRUCTION
    if not instruction.strip():
        raise ValueError("judge instruction is empty: give the criterion, e.g. 'Pick the more polite answer.'")
    return instruction.strip()


def pair_question(instruction: str, prompt: str, first: str, second: str) -> str:
    """The user turn that asks which of `first` (A) and `second` (B) is better."""
    return PAIR_TEMPLATE.format(instruction=instruction, prompt=prompt, first=first, second=second)


def both_orders(prompts: list[str], a: list[str], b: list[str]) -> list[tuple[str, str, str]]:
    """(prompt, first, second) for every pair as (a, b), then every pair as (b, a): 2n questions."""
    return [*zip(prompts, a, b), *zip(prompts, b, a)]


def combine_orders(p_first: np.ndarray) -> np.ndarray:
    """P(a ≻ b) from P_A of the 2n questions laid out by `both_orders`."""
    p_first = np.asarray(p_first, dtype=np.float64)
    n = len(p_first) // 2
    return np.clip(0.5 + 0.5 * (p_first[:n] - p_first[n:]), 0.0, 1.0)
