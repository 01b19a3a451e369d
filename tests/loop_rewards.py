"""Reward functions for the loop tests, importable as a callable oracle ("loop_rewards:letter_e_share")."""
import os


def letter_e_share(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of the letter 'e' among a response's characters: a reward a tiny random model can learn fast."""
    return [text.lower().count("e") / max(len(text), 1) for text in responses]


FAIL_AFTER: int | None = None  # tests set it: the oracle answers this many calls, then raises
calls = 0


def flaky_e_share(prompts: list[str], responses: list[str]) -> list[float]:
    """letter_e_share that fails once FAIL_AFTER calls have been answered (an oracle going down)."""
    global calls
    if FAIL_AFTER is not None and calls >= FAIL_AFTER:
        raise ConnectionError("oracle service unavailable")
    calls += 1
    return letter_e_share(prompts, responses)


def flaky_on_rank_1(prompts: list[str], responses: list[str]) -> list[float]:
    """flaky_e_share failing on torchrun rank 1 alone, after $LOOP_REWARDS_FAIL_AFTER calls (unset: never)."""
    global FAIL_AFTER
    if os.environ.get("RANK") == "1" and "LOOP_REWARDS_FAIL_AFTER" in os.environ:
        FAIL_AFTER = int(os.environ["LOOP_REWARDS_FAIL_AFTER"])
    return flaky_e_share(prompts, responses)
