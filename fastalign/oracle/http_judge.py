"""The OAIF judge served by an OpenAI-compatible server (`vllm serve`, llama.cpp, TGI, a hosted API).

It asks the same question as the local `JudgeOracle` (`pairwise`), both orders, one answer token at
temperature 0 with the top-20 log-probabilities. P_A sums the probabilities of every returned token
that reads "A" once surrounding whitespace is dropped ("A", " A", …), likewise for "B", renormalised
over the two letters; a letter missing from the top 20 counts as 0. A server that returns no
log-probabilities gets a stated fallback: the answer letter itself (A → 1, B → 0), warned once.

The 2n questions of a batch go out as concurrent requests (a bounded pool). Answers of a batch that
failed part-way are kept until the batch completes, so the durable wrapper's retry re-sends only the
questions that failed. Every rank of a torchrun job can share one server.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import re
from typing import Any

import numpy as np

from ..config import ConfigError
from .base import Oracle
from .pairwise import LETTERS, PLAIN_ANSWER_CUE, both_orders, combine_orders, judge_instruction, pair_question
from .service import DEFAULT_KEY_ENV, JsonService, MalformedReply, ServiceError, ServiceRejected

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # OpenAI's maximum, and vLLM's default --max-logprobs
ENDPOINTS = {"chat": "chat/completions", "completions": "completions"}
_LEADING_LETTER = re.compile(r"\W*([AB])(?![A-Za-z])")


class HttpJudgeOracle(Oracle):
    """A pairwise judge behind `url` (…/v1) serving `model`.

    endpoint "chat": the question is the user message and the server applies its chat template (what
    the local judge does with a chat model); "completions": the question plus "\\nAnswer:" is the raw
    prompt (what the local judge does without a chat template).
    """

    def __init__(self, url: str, model: str, instruction: str | None = None, *, endpoint: str = "chat",
                 concurrency: int = 8, timeout: float | None = None, api_key_env: str = DEFAULT_KEY_ENV,
                 check_model: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if endpoint not in ENDPOINTS:
            raise ValueError(f"judge endpoint {endpoint!r}: choose chat or completions")
        if concurrency < 1:
            raise ValueError(f"judge concurrency must be ≥ 1, got {concurrency}")
        if not model:
            raise ValueError("a served judge needs --judge_model (the name the server lists at GET /v1/models)")
        self.service = JsonService(url, option="judge_url", timeout=timeout, api_key_env=api_key_env)
        self.model, self.endpoint = model, endpoint
        self.instruction = judge_instruction(instruction)
        self.name = f"judge {model!r} ({self.service.base_url})"
        self.pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="judge")
        self._answered: dict[str, float] = {}  # P_A per question, kept across the retries of one batch
        self.requests = 0  # requests answered (each question asked once per batch, even when retried)
        self.fallback_answers = 0  # answers read from the letter because the server sent no log-probs
        if check_model:
            self.check_model()

    # ------------------------------------------------------------------ the server
    def served_models(self) -> list[str]:
        reply = self.service.get("models")
        try:
            return [str(m["id"]) for m in reply["data"]]
        except (KeyError, TypeError) as exc:
            raise MalformedReply(f"{self.service.url('models')} did not list models as "
                                 f'{{"data": [{{"id": …}}]}}: {str(reply)[:200]}') from exc

    def check_model(self) -> None:
        """Fail before the run starts if the server is down or does not serve the model."""
        try:
            models = self.served_models()
        except ServiceRejected as exc:
            if exc.status != 404:
                raise ConfigError(f"the judge server refused GET /models: {exc}") from None
            log.warning("%s has no /models endpoint: the judge model name %r is not checked before the run",
                        self.service.base_url, self.model)
            return
        except MalformedReply as exc:
            raise ConfigError(f"the judge server's model list is unreadable: {exc}") from None
        except ServiceError as exc:
            raise ConfigError(f"cannot reach the judge server: {exc} (start it first, e.g. `vllm serve`, "
                              "and check --judge_url, which ends in /v1)") from None
        if self.model not in models:
            raise ConfigError(self._unknown_model(models))

    def _unknown_model(self, models: list[str]) -> str:
        return (f"the judge server at {self.service.base_url} does not serve model {self.model!r}; it serves "
                f"{', '.join(map(repr, models)) or 'no model'}: pass one of them as --judge_model")

    # ------------------------------------------------------------------ one question
    def request_body(self, question: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0}
        if self.endpoint == "chat":
            body.update(messages=[{"role": "user", "content": question}], logprobs=True, top_logprobs=TOP_LOGPROBS)
        else:
            body.update(prompt=question + PLAIN_ANSWER_CUE, logprobs=TOP_LOGPROBS)
        return body

    def ask(self, question: str) -> float:
        """P_A for one question: from the answer token's log-probabilities, else from its letter."""
        try:
            reply = self.service.post(ENDPOINTS[self.endpoint], self.request_body(question))
        except ServiceRejected as exc:
            if exc.status == 404 and "model" in str(exc).lower():
                raise ServiceRejected(f"{exc}; {self._unknown_model(self._models_or_empty())}", 404) from None
            raise
        text, top = parse_answer(reply, self.endpoint, self.service.url(ENDPOINTS[self.endpoint]))
        if top:
            return letter_probability(top, text)
        return self._fallback(text)

    def _models_or_empty(self) -> list[str]:
        try:
            return self.served_models()
        except (ServiceError, ServiceRejected):
            return []

    def _fallback(self, text: str) -> float:
        match = _LEADING_LETTER.match(text)
        if match is None:
            raise MalformedReply(f"the judge answered {text!r} with no log-probabilities: neither A nor B")
        if not self.fallback_answers:
            log.warning("the judge server at %s returned no log-probabilities: P(A) is read from the answer "
                        "letter (1 or 0 per order, so a pair gets 1, 0.5 or 0) — see docs/oracles.md",
                        self.service.base_url)
        self.fallback_answers += 1
        return 1.0 if match.group(1) == "A" else 0.0

    # ------------------------------------------------------------------ a batch
    def _probabilities(self, prompts, a, b):
        questions = [pair_question(self.instruction, *q) for q in both_orders(prompts, a, b)]
        unique = list(dict.fromkeys(questions))
        known = {q: self._answered[q] for q in unique if q in self._answered}
        futures = {self.pool.submit(self.ask, q): q for q in unique if q not in known}
        errors = []
        for future in concurrent.futures.as_completed(futures):
            try:
                known[futures[future]] = self._answered[futures[future]] = future.result()
                self.requests += 1
            except Exception as exc:  # noqa: BLE001 — the first failure is re-raised once all are back
                errors.append(exc)
        if errors:
            raise errors[0]
        for q in unique:
            self._answered.pop(q, None)
        return combine_orders(np.array([known[q] for q in questions])), None, None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def parse_answer(reply: Any, endpoint: str, url: str) -> tuple[str, list[tuple[str, float]]]:
    """(answer text, [(token, logprob) of the first answer position]) of a chat or completions reply;
    the list is empty when the server sent no log-probabilities."""
    try:
        choice = reply["choices"][0]
        text = choice["message"]["content"] if endpoint == "chat" else choice["text"]
        logprobs = choice.get("logprobs")
        if not logprobs:
            return text or "", []
        if endpoint == "chat":
            first = (logprobs.get("content") or [{}])[0]
            top = [(str(t["token"]), float(t["logprob"])) for t in first.get("top_logprobs") or []]
        else:
            first = (logprobs.get("top_logprobs") or [None])[0] or {}
            top = [(str(t), float(lp)) for t, lp in first.items()]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedReply(f"{url} replied without the fields of an OpenAI {endpoint} answer "
                             f"({type(exc).__name__}: {exc}): {str(reply)[:300]}") from None
    return text or "", top


def letter_probability(top: list[tuple[str, float]], text: str) -> float:
    """P(A) renormalised over A and B from one position's top tokens (a missing letter counts as 0)."""
    mass = dict.fromkeys(LETTERS, 0.0)
    for token, logprob in top:
        letter = token.strip()
        if letter in mass and math.isfinite(logprob):
            mass[letter] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    if total <= 0:
        shown = ", ".join(repr(t) for t, _ in top[:8])
        raise MalformedReply(f"the judge answered {text!r} and neither A nor B is among its top "
                             f"{len(top)} answer tokens ({shown}, …): the model does not answer with a letter; "
                             "use a stronger instruct judge or a clearer --judge_instruction")
    return mass["A"] / total
