"""The pairwise LLM judge on the tiny random causal model: batching, both orders, exact probabilities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastalign.oracle import JudgeOracle
from fastalign.oracle.pairwise import PAIR_TEMPLATE

PROMPTS = ["What is 2+2?", "Write a short poem about the sea and the wind over it.", "Name a colour."]
A = ["4", "Waves roll in, the wind sings softly over the grey water.", "Blue"]
B = ["It is five, I think, but I am not sure at all.", "Sea.", "Red is a colour, and so is green."]


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model re-initialised with larger weights: the default init answers ~0.5 for every input."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("judge")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def judge(judge_dir):
    return JudgeOracle(judge_dir, batch_size=4)  # 6 inputs, both orders equally long: 4 mixes lengths


def manual_first_wins(judge, prompt, first, second, instruction) -> float:
    """P('A') renormalised over the two letters, from an unpadded forward of one judge input."""
    tok = judge.tokenizer
    user = PAIR_TEMPLATE.format(instruction=instruction, prompt=prompt, first=first, second=second)
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = torch.softmax(judge.model(input_ids=ids).logits[0, -1].double(), dim=-1)
    letter = {x: probs[tok.encode(x, add_special_tokens=False)[0]] for x in ("A", " A", "B", " B")}
    p_a, p_b = letter["A"] + letter[" A"], letter["B"] + letter[" B"]
    return float(p_a / (p_a + p_b))


def test_equals_manual_both_orders_average(judge):
    pref = judge.compare(PROMPTS, A, B)
    for i in range(len(PROMPTS)):
        ab = manual_first_wins(judge, PROMPTS[i], A[i], B[i], judge.instruction)
        ba = manual_first_wins(judge, PROMPTS[i], B[i], A[i], judge.instruction)
        assert pref.prob_a[i] == pytest.approx(0.5 * (ab + (1 - ba)), abs=1e-5)
    assert pref.scores_a is None and pref.scores_b is None
    np.testing.assert_array_equal(pref.a_wins, pref.prob_a > 0.5)


def test_probabilities_symmetric_and_bounded(judge):
    forward = judge.compare(PROMPTS, A, B).prob_a
    backward = judge.compare(PROMPTS, B, A).prob_a
    assert np.all((forward >= 0) & (forward <= 1))
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-9)
    assert np.ptp(forward) > 0.02  # the answer depends on the content, not a constant


def test_identical_responses_tie(judge):
    assert np.all(judge.compare(PROMPTS, A, A).prob_a == 0.5)


def test_counts_and_custom_instruction(judge_dir):
    judge = JudgeOracle(judge_dir, instruction="Pick the more cheerful answer.", seed=2)
    assert "Pick the more cheerful answer." in judge.judge_text("p", "x", "y")
    pref = judge.compare(PROMPTS[:1], A[:1], B[:1], count=False)
    expected = 0.5 * (manual_first_wins(judge, PROMPTS[0], A[0], B[0], "Pick the more cheerful answer.")
                      + 1 - manual_first_wins(judge, PROMPTS[0], B[0], A[0], "Pick the more cheerful answer."))
    assert pref.prob_a[0] == pytest.approx(expected, abs=1e-5)
    assert (judge.queries, judge.eval_queries) == (0, 1)


def test_answer_tokens_cover_both_spellings(judge):
    tok = judge.tokenizer
    assert judge.letter_ids == [[tok.encode("A", add_special_tokens=False)[0], tok.encode(" A", add_special_tokens=False)[0]],
                                [tok.encode("B", add_special_tokens=False)[0], tok.encode(" B", add_special_tokens=False)[0]]]


def test_bad_arguments(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="instruction is empty"):
        JudgeOracle(tiny_model_dir, instruction="  ")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        JudgeOracle(tmp_path)
