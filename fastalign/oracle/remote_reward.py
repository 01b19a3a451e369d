"""A reward model served over HTTP, in OpenRLHF's remote reward convention (`--remote_rm_url`).

One POST per batch (the a- and b-responses of every pair together):
    request  {"query": [prompt_text + response, …], "prompts": [prompt_text, …], "labels": ["", …]}
    reply    {"rewards": [float, …]}   (one per query, same order; other keys are ignored)
prompt_text is the instruction as the policy saw it (rendered with the policy's chat template when it
has one), so `query[i][len(prompts[i]):]` is the response, as in OpenRLHF. fastalign has no
reference answers, so every label is the empty string.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import RewardOracle
from .service import DEFAULT_KEY_ENV, JsonService, MalformedReply

PromptRenderer = Callable[[str], str]


def chat_prompt_renderer(tokenizer) -> PromptRenderer:
    """The instruction as a one-turn chat prompt up to the assistant's answer (as the policy sees it)."""
    from ..data import has_chat_template

    if not has_chat_template(tokenizer):
        return lambda instruction: instruction

    def render(instruction: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    return render


class RemoteRewardOracle(RewardOracle):
    """Reward = the score a remote server returns for (prompt, response)."""

    def __init__(self, url: str, *, render_prompt: PromptRenderer | None = None, timeout: float | None = None,
                 api_key_env: str = DEFAULT_KEY_ENV, **kwargs) -> None:
        super().__init__(**kwargs)
        self.service = JsonService(url, option="reward_url", timeout=timeout, api_key_env=api_key_env)
        self.render_prompt = render_prompt or (lambda instruction: instruction)
        self.name = f"remote reward ({self.service.base_url})"

    def request_body(self, prompts: list[str], responses: list[str]) -> dict[str, Any]:
        rendered = [self.render_prompt(p) for p in prompts]
        return {"query": [p + r for p, r in zip(rendered, responses)], "prompts": rendered,
                "labels": [""] * len(prompts)}

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        reply = self.service.post("", self.request_body(prompts, responses))
        rewards = reply.get("rewards") if isinstance(reply, dict) else None
        if not isinstance(rewards, list) or len(rewards) != len(responses):
            got = f"{len(rewards)} rewards" if isinstance(rewards, list) else f"{str(reply)[:200]}"
            raise MalformedReply(f"{self.service.base_url} must reply {{\"rewards\": [one number per query]}} for "
                                 f"{len(responses)} queries; got {got}")
        try:
            return np.array([float(r) for r in rewards], dtype=np.float64)
        except (TypeError, ValueError):
            raise MalformedReply(f"{self.service.base_url}: rewards must be numbers, got {str(rewards)[:200]}"
                                 ) from None
