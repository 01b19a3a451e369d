"""SAIL against the authors' trainer (xudongwu-0/SAIL, cdpo/cdpo_trainer.py, GeneralizedDPOTrainer), worked out
by hand on the shared pair (ℓ = log σ(βh) = −0.620957…, log π(y_w) = −10, log π(y_l) = −12):
- label term (DDP, DPP): `losses -= 0.5 * rho * logsigmoid(beta * logits) ** 2` on the routed rows;
- sampling term (DPP, DPR): the score-function gradient ℓ·∇log π(y) of both responses ("exact"), or the
  authors' hook adding −coef·sg(ℓ)/sg(log π(y)) to ∂L/∂log π(y) ("authors");
- the rest of the batch: plain DPO on labelled pairs.
"""
import numpy as np
import pytest
import torch

from fastalign.algorithms import build_algorithm
from fastalign.config import ConfigError
from fastalign.types import DATASET, ORACLE, POLICY

from algorithm_pairs import DPO_GRAD, ELL, config, one_pair, pair_record


def pr(**kw):
    return build_algorithm(config(algorithm="sail-pr", sail_share=1.0, sail_coef=0.3, **kw))


def test_pr_exact_sampling_term():
    """L = −ℓ − λ·sg(ℓ)·(log π(y_w) + log π(y_l)), λ = 0.3, every pair routed (share 1)."""
    s = one_pair()
    loss, _, metrics = pr().loss(s, [pair_record()], None)
    loss.sum().backward()
    assert loss.item() == pytest.approx(-ELL - 0.3 * ELL * (-22.0))
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD - 0.3 * ELL)
    assert s.policy_rejected.grad.item() == pytest.approx(-DPO_GRAD - 0.3 * ELL)
    assert s.ref_chosen.grad.item() == pytest.approx(-DPO_GRAD)  # the sampling term does not touch π_ref
    assert metrics["sail/routed"] == 1.0


def test_pr_authors_form_reproduces_their_gradient_hook():
    """The hook: grad − γ·ℓ/log π(y) for each response (per pair, with the batch mean taken by the learner)."""
    s = one_pair()
    loss, _, _ = pr(sail_sampling="authors").loss(s, [pair_record()], None)
    loss.sum().backward()
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD - 0.3 * ELL / -10.0)
    assert s.policy_rejected.grad.item() == pytest.approx(-DPO_GRAD - 0.3 * ELL / -12.0)


def test_pr_routes_its_share_of_pairs_at_every_update():
    algorithm = build_algorithm(config(algorithm="sail-pr", sail_share=0.3))
    routed = torch.cat([algorithm.routed(100, torch.device("cpu")) for _ in range(50)])
    assert routed.float().mean().item() == pytest.approx(0.3, abs=0.02)
    again = build_algorithm(config(algorithm="sail-pr", sail_share=0.3))
    assert torch.equal(torch.cat([again.routed(100, torch.device("cpu")) for _ in range(50)]), routed)  # seeded


def test_pp_queries_the_oracle_for_the_unrouted_share_only():
    algorithm = build_algorithm(config(algorithm="sail-pp"))
    sources = algorithm.label_sources(10_000, np.random.default_rng(0))
    assert set(sources) == {POLICY, ORACLE}
    assert np.mean(sources == POLICY) == pytest.approx(0.3, abs=0.02)  # the authors' p = 0.3


class FakeLearner:
    """Policy log-probs where the first pair's policy strongly prefers its chosen response, the second's not."""

    def policy_logps(self, pairs):
        return torch.tensor([0.0, -100.0, -100.0, 0.0])  # [chosen..., rejected...]


def test_pp_draws_its_labels_from_the_policys_preference_once():
    algorithm = build_algorithm(config(algorithm="sail-pp"))
    keep, swap, oracle = (pair_record(labelled_by=POLICY, ref_chosen_logprob=-1.0, ref_rejected_logprob=-1.0),
                          pair_record(labelled_by=POLICY, ref_chosen_logprob=-1.0, ref_rejected_logprob=-1.0),
                          pair_record(labelled_by=ORACLE, ref_chosen_logprob=-1.0, ref_rejected_logprob=-1.0))
    swap.chosen_ids, swap.rejected_ids = [7], [8]
    metrics = algorithm.prepare([keep, swap, oracle], FakeLearner())
    assert keep.chosen_ids == [3]  # σ(β·100) ≈ 1: the policy's label keeps the order
    assert swap.chosen_ids == [8] and swap.rejected_ids == [7]  # σ(−β·100) ≈ 0: swapped
    assert oracle.chosen_ids == [3] and metrics["sail/label_swapped"] == 0.5


def test_pp_loss_adds_both_terms_to_policy_labelled_pairs_only():
    """policy-labelled: −ℓ − λℓ·(−22) − ½λℓ²; oracle-labelled: −ℓ (λ = 0.2, the authors' π)."""
    algorithm = build_algorithm(config(algorithm="sail-pp"))
    s = one_pair(w=-10.0, l=-12.0)
    s2 = one_pair()
    both = type(s)(*(torch.cat([a, b]) for a, b in zip(vars(s).values(), vars(s2).values())))
    loss, _, _ = algorithm.loss(both, [pair_record(labelled_by=POLICY), pair_record(labelled_by=ORACLE)], None)
    assert loss.tolist() == pytest.approx([-ELL - 0.2 * ELL * -22.0 - 0.5 * 0.2 * ELL ** 2, -ELL])
    s = one_pair()
    loss, _, _ = algorithm.loss(s, [pair_record(labelled_by=POLICY)], None)
    loss.sum().backward()
    # ∂/∂ log π(y_w): DPO + sampling (−λℓ) + label term (−λℓ·∂ℓ/∂ log π(y_w) = −λℓ·β(1−σ))
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD - 0.2 * ELL - 0.2 * ELL * 0.1 * (1 - 0.5374298453437496))


def dataset_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}\n')
    return path


def test_dp_samples_the_datasets_pairs_chosen_first(tmp_path, tokenizer):
    algorithm = build_algorithm(config(algorithm="sail-dp", prompts=str(dataset_file(tmp_path))), tokenizer=tokenizer)
    prompt = type("P", (), {"instruction": "Name a colour."})()
    [[chosen, rejected]] = algorithm.sample(None, [prompt], lambda stream: 0)
    assert (chosen.text, rejected.text, chosen.source) == ("Blue.", "No.", DATASET)
    assert chosen.token_ids[-1] == tokenizer.eos_token_id
    assert list(algorithm.label_sources(3, np.random.default_rng(0))) == [DATASET] * 3


def test_dp_routed_pairs_get_a_redrawn_label_and_the_label_term(tmp_path, tokenizer):
    algorithm = build_algorithm(config(algorithm="sail-dp", prompts=str(dataset_file(tmp_path))), tokenizer=tokenizer)
    algorithm.routed = lambda n, device: torch.tensor([True, False])
    algorithm.draw_swaps = lambda s: torch.tensor([True, True])  # only routed pairs may be swapped
    s = one_pair()
    both = type(s)(*(torch.cat([a, a]) for a in vars(s).values()))
    loss, labelled, metrics = algorithm.loss(both, [pair_record(labelled_by=DATASET)] * 2, None)
    swapped_ell = ELL - 0.15  # log σ(−0.15) = log σ(0.15) − 0.15
    assert loss.tolist() == pytest.approx([-swapped_ell - 0.5 * 0.2 * swapped_ell ** 2, -ELL])  # ρ = 0.2
    assert labelled.policy_chosen.tolist() == [-12.0, -10.0] and metrics["sail/label_swapped"] == 0.5


def test_dp_refuses_a_row_without_its_pair(tmp_path, tokenizer):
    from fastalign.data import PromptFormatError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Name a colour.", "chosen": "Blue."}\n')
    with pytest.raises(PromptFormatError, match="bad.jsonl:1: field 'rejected' must be a non-empty response string"):
        build_algorithm(config(algorithm="sail-dp", prompts=str(bad)), tokenizer=tokenizer)


@pytest.mark.parametrize("options, message", [
    (dict(algorithm="sail-pr", explore="ee-ts", samples_per_prompt=4), "assumes each pair was drawn from π_θ"),
    (dict(algorithm="sail-pp", top_p=0.9), "--temperature 1 --top_p 1"),
    (dict(algorithm="sail-pr", temperature=0.7), "--temperature 1 --top_p 1"),
    (dict(algorithm="sail-pp", sail_share=1.0), "sail_share must be in \\(0, 1\\)"),
    (dict(algorithm="sail-pr", sail_share=0.0), "sail_share must be in \\(0, 1\\]"),
    (dict(algorithm="sail-dp"), "the default prompt set does not have"),
    (dict(algorithm="sail-pr", loss="ipo"), "defined on the DPO likelihood"),
    (dict(algorithm="sail-pp", sail_sampling="hook"), "unknown sail_sampling 'hook'"),
])
def test_refused_configurations(options, message):
    with pytest.raises(ConfigError, match=message):
        config(**options).validate()


def test_defaults_are_the_authors_example_settings():
    shares = {name: (build_algorithm(config(algorithm=name)).share, build_algorithm(config(algorithm=name)).coef)
              for name in ("sail-pr", "sail-pp")}
    assert shares == {"sail-pr": (0.3, 0.3), "sail-pp": (0.3, 0.2)}
