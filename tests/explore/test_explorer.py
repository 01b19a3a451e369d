"""Explorer checkpoint state: the selection counter and the whole epistemic reward model round-trip."""
import pytest
import torch

from fastalign.explore.explorer import EpistemicExplorer, PassiveExplorer
from fastalign.explore.reward_model import EpistemicRewardModel


def trained_explorer(seed: int) -> EpistemicExplorer:
    model = EpistemicRewardModel(feature_dim=8, num_heads=3, hidden=16, batch_size=4, seed=seed)
    explorer = EpistemicExplorer("ee-ts", features=None, reward_model=model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    model.add_pairs(torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g))
    model.update()
    explorer.calls = 7
    return explorer


def test_epistemic_explorer_state_round_trips_and_continues_identically():
    a, b = trained_explorer(0), trained_explorer(1)
    b.load_state_dict(a.state_dict())
    assert b.calls == 7 and b.reward_model.pairs_seen == 6
    assert a.reward_model.update() == b.reward_model.update()  # same Adam state, replay and sampling stream
    x = torch.randn(5, 8)
    assert torch.equal(a.reward_model.rewards(x), b.reward_model.rewards(x))


def test_state_of_another_strategy_is_refused():
    passive = PassiveExplorer(seed=0)
    with pytest.raises(ValueError, match="explorer state is for 'ee-ts'"):
        passive.load_state_dict(trained_explorer(0).state_dict())
