"""bench/reward_features.py: pairs, both learners on features that do and do not carry the preference, and a
tiny end-to-end run over fake sweep directories (a stand-in embedder, the real oracles)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("reward_features", REPO / "bench" / "reward_features.py")
rf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rf)


def linear_task(n_prompts=24, per_prompt=6, dim=8, seed=0):
    """Features whose first coordinate is the score, and groups of answers per prompt."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(n_prompts * per_prompt, dim, generator=g)
    scores = phi[:, 0].double().numpy() * 2.0
    groups = [np.arange(k * per_prompt, (k + 1) * per_prompt) for k in range(n_prompts)]
    return phi, scores, groups


def test_an_unknown_oracle_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        rf.parse_args(["--oracles", "vader,sentiment"])
    assert "unknown sentiment" in capsys.readouterr().err


def test_random_pairs_put_the_better_answer_first_and_stay_within_a_prompt():
    scores = np.array([0.0, 1.0, 1.0, 5.0, 5.0, 5.0])  # the second prompt is all ties: never used
    groups = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    pairs = rf.random_pairs(groups, scores, 50, np.random.default_rng(0))
    assert pairs.shape == (50, 2)
    assert all(scores[a] > scores[b] for a, b in pairs)
    assert set(pairs.ravel()) <= {0, 1, 2}


def test_both_learners_find_a_preference_the_features_carry_and_not_one_they_do_not():
    phi, scores, groups = linear_task()
    rng = np.random.default_rng(1)
    train, test = rf.random_pairs(groups[:18], scores, 160, rng), rf.random_pairs(groups[18:], scores, 300, rng)
    assert rf.fit_logistic(phi, train, test) > 0.9
    accs = rf.fit_reward_model(phi, train, test, [16, 160], batch_size=8, seed=0)
    assert set(accs) == {16, 160} and accs[160] > 0.85
    blind = phi.clone()
    blind[:, 0] = torch.randn(len(phi), generator=torch.Generator().manual_seed(7))  # the score's coordinate gone
    assert rf.fit_logistic(blind, train, test) < 0.7
    assert rf.fit_reward_model(blind, train, test, [160], batch_size=8, seed=0)[160] < 0.7


class HashEmbedder:
    """Deterministic unit vectors per text; the pair embedding mixes the two texts' vectors."""

    dim = 16

    def embed(self, texts):
        out = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            v = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
            out.append(v / v.norm())
        return torch.stack(out)

    def __call__(self, prompts, responses):
        mixed = self.embed(list(prompts)) + self.embed(list(responses))
        return mixed / mixed.norm(dim=1, keepdim=True)


ANSWERS = ("Sure. {t} is a topic with many sides, and here is one of them.",
           "I'm thrilled to help!!! {t}!",
           "{t} {t} {t} {t} {t} {t} {t} {t}",
           "Fine",
           "A short note on {t}, covering the main points a reader would want to know and why",
           "What a wonderful question! I am so excited to talk about {t} with you today.")


TOPICS = ("bread", "rivers", "chess", "tea", "maps", "owls", "jazz", "glass", "clocks", "kites", "salt", "bees",
          "ships", "paper", "moss", "wool")


def fake_sweep(root: Path) -> Path:
    """Three finished runs and one still going (its answers end "Draft."), each answering every topic."""
    sweep = root / "sweep"
    for method, shift, finished in (("passive", 1, True), ("sea", 2, True), ("apl", 3, True), ("going", 4, False)):
        run = sweep / method / "seed0"
        run.mkdir(parents=True)
        rows = [{"prompt": f"Write about {t}.", "reference": ANSWERS[k % 6].format(t=t),
                 "policy": ANSWERS[(k + shift) % 6].format(t=t) + ("" if finished else " Draft.")}
                for k, t in enumerate(TOPICS)]
        (run / "eval_responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if finished:
            (run / "summary.json").write_text("{}")
    return sweep


def test_final_answers_reads_finished_runs_only(tmp_path):
    prompts, items, runs = rf.final_answers([fake_sweep(tmp_path)])
    assert runs == ["sweep/apl/seed0", "sweep/passive/seed0", "sweep/sea/seed0"]
    assert len(prompts) == 16 and len(items) == len(set(items)) == 16 * 4
    assert not any(a.endswith("Draft.") for _, a in items)
    assert all(p in prompts for p, _ in items)


def test_no_sweep_is_a_clear_error_before_any_encoder_runs(tmp_path):
    for runs_dirs in ("", str(tmp_path / "none")):  # a fresh clone's default, a mistyped directory
        with pytest.raises(SystemExit, match="run a sample-efficiency sweep first"):
            rf.main(["--runs_dirs", runs_dirs, "--cache", str(tmp_path / "f.pt"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "f.pt").exists()


def test_policy_features_are_the_initial_policys_final_states_averaged_over_the_answer(tiny_model_dir, tokenizer):
    """By hand: the model's last hidden_states entry (after the final norm) over [chat prompt, answer (+ stop)]."""
    from fastalign.models import load_causal_lm

    items = [("Write about tea.", "Tea is a drink."), ("Write about owls.", "Owls " * 40)]
    got = rf.policy_hidden_states(items, str(tiny_model_dir), max_new_tokens=32)
    model = load_causal_lm(tiny_model_dir).eval()
    for row, (prompt, answer) in enumerate(items):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if row == 0:
            answer_ids = answer_ids + [tokenizer.eos_token_id]  # short: it ended on the stop token
        else:
            assert len(answer_ids) >= 32  # cut at the length limit: no stop token
        with torch.no_grad():
            states = model(torch.tensor([prompt_ids + answer_ids]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(got[row], states[len(prompt_ids):].mean(0), atol=1e-5, rtol=1e-4)


def test_main_writes_accuracies_per_oracle_feature_map_and_learner(tmp_path, tiny_model_dir, monkeypatch):
    sweep = fake_sweep(tmp_path)
    out, cache = tmp_path / "result", tmp_path / "cache" / "features.pt"
    argv = ["--runs_dirs", str(sweep), "--splits", "2", "--train_pairs", "8,64", "--test_pairs", "100",
            "--cache", str(cache), "--out", str(out), "--policy", str(tiny_model_dir)]
    assert rf.main(argv, embedder=HashEmbedder()) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["setup"]["prompts"] == 16 and result["setup"]["splits"] == 2
    assert result["setup"]["policy"] == str(tiny_model_dir)
    assert set(result["oracles"]["vader"]) == {"minilm", "minilm+prompt*answer", "policy"}
    assert set(result["oracles"]["rubric"]) == {"minilm", "minilm+prompt*answer", "policy", "criteria"}
    for learners in result["oracles"]["rubric"].values():
        assert set(learners) == {"reward_model", "logistic"}
        assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for lr in learners.values() for v in lr.values())
    assert np.mean(result["oracles"]["rubric"]["criteria"]["logistic"]["64"]) > 0.9  # the rubric is linear in them
    assert cache.is_file()

    class Refuse:
        def embed(self, texts, *rest):
            raise AssertionError("an encoder ran although the cache covers these answers")
        __call__ = embed

    monkeypatch.setattr(rf, "policy_hidden_states", Refuse().embed)
    assert rf.main(argv, embedder=Refuse()) == 0
    assert rf.main([*argv[:-2], "--policy", "none"], embedder=Refuse()) == 0  # the map left out, the cache kept
    assert "policy" not in json.loads(out.with_suffix(".json").read_text())["oracles"]["vader"]
