"""The rubric oracle (`--oracle rubric`): each criterion by hand, the weighted sum, determinism, and its
ranking of real SmolLM2-135M-Instruct answers against VADER's.

The answers below are real model outputs: greedy or sampled (T = 0.7, 48 new tokens) from the packaged
SmolLM2-135M-Instruct on prompts of the packaged set, and — marked "over-optimised" — answers of policies
trained against VADER, as quoted in the README and the sample-efficiency issue.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastalign.config import ConfigError, RunConfig
from fastalign.oracle import RubricOracle, VaderOracle, build_oracle
from fastalign.oracle.rubric import WEIGHTS, echo, effusive, repetition, short, unfinished, words


def test_each_criterion_by_hand():
    assert words("I'm here—it's 3 o'clock!") == ["i'm", "here", "it's", "3", "o'clock"]
    assert repetition("a b c a b c") == pytest.approx(1 - 3 / 4)  # trigrams abc bca cab abc
    assert repetition("one two") == 0.0
    assert echo("Describe a crowded beach on a hot day.", "A crowded beach on a hot day is loud.") == pytest.approx(
        5 / 7)  # of 7 response trigrams, all but hot-day-is and day-is-loud occur in the prompt
    assert effusive("I'm always happy to help! Great question.") == 1.0  # 3 phrases + 1 "!" → capped at 1
    assert effusive("I am happy.") == 0.0  # a sentiment word alone is no boilerplate
    assert effusive("What a wonderful day") == pytest.approx(1 / 3)
    assert short("") == 1.0 and short("Yes.") == pytest.approx(1 - 1 / 8) and short("one " * 8) == 0.0
    assert unfinished("It works.") == 0.0 and unfinished('He said "hi."') == 0.0 and unfinished("It works") == 1.0


class Axis:
    """Embeds a text on one of two orthogonal axes: texts mentioning 'tea' vs the rest."""

    def embed(self, texts):
        return np.array([[1.0, 0.0] if "tea" in t else [0.0, 1.0] for t in texts])


def test_reward_is_the_weighted_sum_of_the_criteria():
    oracle = RubricOracle(embedder=Axis())
    prompts = ["Review a tea shop.", "Review a tea shop."]
    answers = ["Good tea and quiet tables.", "Welcome! Welcome! Welcome!"]
    values = oracle.criteria(prompts, answers)
    assert values["relevance"].tolist() == [1.0, 0.0]
    want = [1.0 - 1.0 * (1 - 5 / 8) - 0.0,  # relevant, 5 words (short), finished
            0.0 - 2.0 * 0.0 - 1.0 * 1.0 - 1.0 * (1 - 3 / 8)]  # off-topic, 3 "!", 3 words, finished
    assert oracle.score(prompts, answers) == pytest.approx(want)
    assert sum(WEIGHTS[k] * values[k] for k in WEIGHTS) == pytest.approx(want)
    pref = oracle.compare(prompts[:1], answers[:1], answers[1:])
    assert pref.a_wins.tolist() == [True] and oracle.queries == 1


@pytest.fixture(scope="module")
def rubric():
    return RubricOracle()


def test_a_reward_does_not_depend_on_the_batch_it_came_in(rubric):
    prompts, answers = ["Explain tides.", "Explain tides.", "Name a fruit."], ["The moon pulls water.", "Gravity.", "Pear."]
    together = rubric.score(prompts, answers)
    fresh = RubricOracle(embedder=rubric.embedder)
    assert [float(fresh.score([p], [a])[0]) for p, a in zip(prompts, answers)] == together.tolist()


# (prompt, plain helpful answer, repetitive or effusive answer, where the latter comes from)
REAL_PAIRS = [
    ("Write a short review of an electric kettle.",
     "I've been using an electric kettle for a few weeks now, and it's been a game-changer. The energy efficiency "
     "is amazing, and it's also very convenient. I have no complaints. I just want to make sure I",
     "The electric kettle is a marvel of modern technology. It's a marvel of modern technology. The design is sleek "
     "and modern, with a sleek design that is very modern. The design is very modern. The design is very modern. "
     "The design",  # greedy, repetitive
     ),
    ("Review a tea shop that serves over fifty kinds of tea.",
     "There's something about these tea shops that gives me the feel of a busy market market. The aroma of exotic "
     "spices wafts through the air, enticing customers with its bold, aromatic flavor. I've been to several tea "
     "shops in my area",
     "I'm sorry for any misglamour, but I'm more than happy to help you with your review. I'm here to help you find "
     "the best tea shop in town. I'm not here to judge your taste, but I",  # greedy, effusive non-answer
     ),
    ("Review a tea shop that serves over fifty kinds of tea.",
     "There's something about these tea shops that gives me the feel of a busy market market. The aroma of exotic "
     "spices wafts through the air, enticing customers with its bold, aromatic flavor. I've been to several tea "
     "shops in my area",
     "Welcome to a wonderful place! Welcome to a wonderful place!",  # over-optimised against VADER
     ),
    ("Reflect on learning to ride a bicycle.",
     "The act of learning to ride a bicycle is both physically and mentally taxing. Forcing yourself to tackle a "
     "machine that requires manual effort and physical exertion can be unnerving. This experience has instilled in "
     "me a sense of responsibility and dedication",
     "To learn to ride a bicycle, it takes a lot of effort to learn to ride a bicycle.",  # over-optimised
     ),
    ("Write a short email introducing yourself to a new client.",
     "Subject: Welcome to My Business\n\nHello, I'm Alex, a talented digital marketing specialist with a passion for "
     "innovative marketing solutions. I've been working with numerous clients across various industries, and I'm "
     "here to help you achieve your business",
     "I'm always happy to help with a wonderful message. I'm always happy to help with a wonderful message.",
     ),
]


def test_repetitive_and_effusive_real_answers_rank_below_plain_helpful_ones(rubric):
    prompts, plain, bad = (list(x) for x in zip(*REAL_PAIRS))
    assert (rubric.score(prompts, plain) > rubric.score(prompts, bad)).all()
    vader = VaderOracle()
    vader_prefers_bad = vader.score(prompts, bad) > vader.score(prompts, plain)
    assert vader_prefers_bad.sum() >= 3  # what VADER rewards, the rubric does not


def test_rubric_is_built_from_the_config_and_takes_no_path(rubric, monkeypatch):
    monkeypatch.setattr("fastalign.explore.features.MiniLMFeatures", lambda: rubric.embedder)
    oracle = build_oracle(RunConfig(oracle="rubric", preference="bt", seed=3).validate())
    assert isinstance(oracle, RubricOracle) and oracle.preference == "bt"
    with pytest.raises(ConfigError, match="not used by the rubric oracle"):
        RunConfig(oracle="rubric", oracle_path="x").validate()
