"""The judge's instruction reaches the default 135M model and changes its answers; how far its length
preference moves is measured, not assumed (README, Oracles: a 135M judge barely follows it).

Uses the packaged default model, converted on first use (about 40 s on a fresh machine; cached after)."""
import numpy as np
import pytest

from fastalign.config import DEFAULT_MODEL

PROMPTS = ["What is the capital of France?", "How do I boil an egg?", "What colour is the sky?"]
SHORT = ["Paris.", "Boil it for nine minutes.", "Blue."]
LONG = ["The capital of France is Paris, a large city on the Seine known for the Eiffel Tower, the Louvre "
        "museum, its cafes and its long history as the political and cultural centre of the country.",
        "Place the egg in a saucepan, cover it with cold water, bring the water to a boil, then lower the heat "
        "and simmer for about nine minutes before cooling the egg in cold water and peeling it.",
        "On a clear day the sky looks blue, because molecules in the air scatter the short blue wavelengths of "
        "sunlight more strongly than the longer red ones, while at sunset it turns orange and red."]


@pytest.mark.timeout(600)
def test_instruction_changes_the_default_judges_preferences():
    from fastalign.models import resolve_model_dir
    from fastalign.oracle import JudgeOracle

    judge = JudgeOracle(resolve_model_dir(DEFAULT_MODEL), batch_size=12)
    probs = {}
    for word in ("shorter", "longer"):
        judge.instruction = f"Prefer the {word} answer."
        probs[word] = judge.compare(PROMPTS, SHORT, LONG, count=False).prob_a  # P(short ≻ long), both orders
    assert np.all((probs["shorter"] > 0) & (probs["shorter"] < 1))
    assert np.abs(probs["shorter"] - probs["longer"]).max() > 1e-4  # the instruction is part of what is judged
    assert judge.eval_queries == 6 and judge.queries == 0
