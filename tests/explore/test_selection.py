"""Pair selection: known answers per strategy, identity ids, exact C++/numpy parity, validation."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fastalign import _C
from fastalign.explore import selection
from fastalign.explore.selection import STRATEGIES, RowStreams, Selection, select_pairs, select_pairs_numpy

BACKENDS = ("cpp", "numpy")


def rewards_from(per_response: list[list[float]], rows: int = 1) -> np.ndarray:
    """[rows, N, E] float32 with the same [N, E] table in every row (each row has its own RNG)."""
    return np.broadcast_to(np.asarray(per_response, np.float32), (rows, *np.shape(per_response))).copy()


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("backend", BACKENDS)
def test_best_worst_picks_extremes_of_the_mean(backend: str) -> None:
    r = rewards_from([[1, 1], [3, 5], [0, -2], [2, 2]])
    sel = select_pairs(r, strategy="best-worst", backend=backend)
    assert sel.pairs.tolist() == [[1, 2]]
    assert sel.heads.tolist() == [[-1, -1]]
    assert sel.scores.tolist() == [5.0]
    # response 2 identical to the best one: the worst *available* is response 0
    sel = select_pairs(r, ids=np.array([[0, 5, 5, 2]]), strategy="best-worst", backend=backend)
    assert sel.pairs.tolist() == [[1, 0]]
    assert sel.scores.tolist() == [3.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_best_worst_ties_go_to_lowest_index(backend: str) -> None:
    sel = select_pairs(rewards_from([[1, 1]] * 4), strategy="best-worst", backend=backend)
    assert sel.pairs.tolist() == [[0, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_best_of_n_second_is_uniform_over_the_rest(backend: str) -> None:
    r = rewards_from([[0, 0], [4, 4], [1, 1], [2, 2], [3, 3]], rows=400)
    ids = np.tile(np.array([0, 1, 2, 2, 3]), (400, 1))  # response 3 duplicates response 2
    sel = select_pairs(r, ids=ids, strategy="best-of-n", seed=7, backend=backend)
    assert (sel.pairs[:, 0] == 1).all()
    counts = np.bincount(sel.pairs[:, 1], minlength=5)
    assert counts[1] == 0 and counts.sum() == 400
    assert (counts[[0, 2, 3, 4]] > 60).all(), counts  # 4 available responses, 100 expected each
    mean = r[0].mean(axis=1)
    np.testing.assert_array_equal(sel.scores, mean[1] - mean[sel.pairs[:, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_passive_draws_distinct_pairs_uniformly(backend: str) -> None:
    r = rewards_from([[0.0], [1.0], [2.0], [3.0]], rows=1200)
    sel = select_pairs(r, strategy="passive", seed=3, backend=backend)
    assert (sel.pairs[:, 0] != sel.pairs[:, 1]).all()
    unordered = np.sort(sel.pairs, axis=1)
    counts = {pair: int((unordered == pair).all(axis=1).sum()) for pair in itertools.combinations(range(4), 2)}
    assert all(130 < c < 270 for c in counts.values()), counts  # 200 expected each
    ids = np.tile(np.array([9, 9, 9, 4]), (1200, 1))
    sel = select_pairs(r, ids=ids, strategy="passive", seed=3, backend=backend)
    assert (np.sort(sel.pairs, axis=1)[:, 1] == 3).all()  # every pair must include the distinct one


@pytest.mark.parametrize("backend", BACKENDS)
def test_ee_ts_second_comes_from_a_disagreeing_head(backend: str) -> None:
    # heads 0 and 1 prefer response 0, head 2 prefers response 2
    r = rewards_from([[5, 5, 1], [1, 1, 0], [0, 0, 6]], rows=64)
    sel = select_pairs(r, strategy="ee-ts", seed=11, backend=backend)
    head1 = sel.heads[:, 0]
    assert set(head1.tolist()) == {0, 1, 2}
    agree = head1 < 2
    assert (sel.pairs[agree] == [0, 2]).all() and (sel.heads[agree, 1] == 2).all()
    assert (sel.pairs[~agree] == [2, 0]).all() and np.isin(sel.heads[~agree, 1], [0, 1]).all()
    assert set(sel.heads[~agree, 1].tolist()) == {0, 1}  # the shuffled order varies across rows
    np.testing.assert_array_equal(sel.scores[agree], 5.0 - 0.0)
    np.testing.assert_array_equal(sel.scores[~agree], 6.0 - 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ee_ts_falls_back_to_second_best_under_the_first_head(backend: str) -> None:
    r = rewards_from([[5, 5, 5], [4, 1, 3], [1, 4, 2]], rows=48)  # every head prefers response 0
    sel = select_pairs(r, strategy="ee-ts", seed=2, backend=backend)
    head1 = sel.heads[:, 0]
    assert (sel.pairs[:, 0] == 0).all() and (sel.heads[:, 1] == -1).all()
    np.testing.assert_array_equal(sel.pairs[:, 1], np.where(head1 == 1, 2, 1))
    np.testing.assert_array_equal(sel.scores, 5.0 - r[0, sel.pairs[:, 1], head1])
    # head 2 prefers response 1, but it is identical to response 0: still the fallback
    r2 = rewards_from([[5, 5, 5], [4, 1, 9], [1, 4, 2]], rows=48)
    sel = select_pairs(r2, ids=np.tile([[3, 3, 8]], (48, 1)), strategy="ee-ts", seed=2, backend=backend)
    assert (sel.pairs[sel.heads[:, 0] < 2] == [0, 2]).all()
    assert (sel.heads[sel.heads[:, 0] < 2, 1] == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ee_ts_single_head_uses_second_best(backend: str) -> None:
    sel = select_pairs(rewards_from([[1.0], [3.0], [2.0]]), strategy="ee-ts", backend=backend)
    assert sel.pairs.tolist() == [[1, 2]] and sel.heads.tolist() == [[0, -1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bai_ts_maximises_variance_of_the_difference(backend: str) -> None:
    # all heads prefer response 0; 0−1 = [10, 10] (variance 0), 0−2 = [10, 6] (variance 4)
    r = rewards_from([[10, 10], [0, 0], [0, 4]], rows=16)
    sel = select_pairs(r, strategy="bai-ts", seed=5, backend=backend)
    assert (sel.pairs == [0, 2]).all()
    assert set(sel.heads[:, 0].tolist()) == {0, 1} and (sel.heads[:, 1] == -1).all()
    np.testing.assert_array_equal(sel.scores, 4.0)
    sel = select_pairs(r, ids=np.tile([[0, 1, 0]], (16, 1)), strategy="bai-ts", seed=5, backend=backend)
    assert (sel.pairs == [0, 1]).all() and (sel.scores == 0.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncertainty_picks_the_most_contested_pair(backend: str) -> None:
    # Var(0−1) = 1, Var(0−2) = 0, Var(1−2) = 1: the tie goes to the row-major first pair (0, 1)
    r = rewards_from([[0, 0], [1, -1], [2, 2]])
    sel = select_pairs(r, strategy="uncertainty", backend=backend)
    assert sel.pairs.tolist() == [[0, 1]] and sel.scores.tolist() == [1.0]
    sel = select_pairs(r, ids=np.array([[4, 4, 5]]), strategy="uncertainty", backend=backend)
    assert sel.pairs.tolist() == [[1, 2]]
    # variances: (0,2) 6, (2,3) 8, every other pair below 3
    r = rewards_from([[0, 0, 0], [1, -1, 0], [3, -3, 0], [2, 2, 5]])
    sel = select_pairs(r, strategy="uncertainty", backend=backend)
    assert sel.pairs.tolist() == [[2, 3]] and sel.scores[0] == pytest.approx(8.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rows_without_two_distinct_responses_get_no_pair(backend: str, strategy: str) -> None:
    r = np.random.default_rng(0).standard_normal((3, 4, 3)).astype(np.float32)
    ids = np.array([[1, 1, 1, 1], [0, 1, 1, 1], [2, 2, 2, 2]])
    sel = select_pairs(r, ids=ids, strategy=strategy, backend=backend)
    assert sel.valid.tolist() == [False, True, False]
    assert sel.pairs[[0, 2]].tolist() == [[-1, -1], [-1, -1]]
    assert sel.heads[[0, 2]].tolist() == [[-1, -1], [-1, -1]]
    assert np.isnan(sel.scores[[0, 2]]).all() and np.isfinite(sel.scores[1])
    assert sorted(sel.pairs[1].tolist())[0] == 0  # the only distinct response must be in the pair


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identical_responses_are_never_paired(backend: str, strategy: str) -> None:
    g = np.random.default_rng(1)
    r = g.standard_normal((64, 6, 4)).astype(np.float32)
    ids = g.integers(0, 3, size=(64, 6))
    sel = select_pairs(r, ids=ids, strategy=strategy, seed=9, backend=backend)
    ok = sel.valid
    assert ok.sum() > 50
    rows = np.flatnonzero(ok)
    assert (ids[rows, sel.pairs[rows, 0]] != ids[rows, sel.pairs[rows, 1]]).all()
    default = select_pairs(r, strategy=strategy, seed=9, backend=backend)
    explicit = select_pairs(r, ids=np.tile(np.arange(6), (64, 1)), strategy=strategy, seed=9, backend=backend)
    np.testing.assert_array_equal(default.pairs, explicit.pairs)


# ----------------------------------------------------------------------------- C++ == numpy


def test_rng_streams_match() -> None:
    streams = RowStreams(2**64 - 5, 6)
    drawn = np.stack([streams.next() for _ in range(5)], axis=1)
    for row in range(6):
        np.testing.assert_array_equal(_C.rng_draws(2**64 - 5, row, 5), drawn[row])
    assert len(set(drawn.ravel().tolist())) == drawn.size


@pytest.mark.parametrize("shape", [(1, 2, 1), (5, 2, 3), (7, 3, 1), (16, 20, 20), (9, 11, 5), (3, 33, 7), (0, 4, 2),
                                   (40, 7, 9), (18, 4, 4)])  # past one 16-row chunk, N not a multiple of 4
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpp_equals_numpy_exactly(shape: tuple[int, int, int], strategy: str) -> None:
    g = np.random.default_rng(sum(shape) * 31 + STRATEGIES.index(strategy))
    for seed in (0, 1, 987654321, 2**64 - 1):
        cases = [
            (g.standard_normal(shape).astype(np.float32) * 10, None),
            (g.integers(-2, 3, size=shape).astype(np.float32), None),  # many ties
            (g.standard_normal(shape).astype(np.float32), g.integers(0, 3, size=shape[:2])),
        ]
        for rewards, ids in cases:
            cpp = _C.select_pairs(rewards, ids, strategy, seed)
            ref = select_pairs_numpy(rewards, ids, strategy, seed)
            for got, want, what in zip(cpp, ref, ("pairs", "heads", "scores")):
                assert got.dtype == want.dtype, what
                np.testing.assert_array_equal(got, want, err_msg=f"{what} seed={seed} ids={ids is not None}")


@pytest.mark.skipif(not _C.AVX2, reason="the baseline paths are the ones running already")
def test_baseline_paths_equal_numpy_too() -> None:
    """The hand-written AVX2 code falls back to baseline code on CPUs without AVX2: the parity and
    known-answer tests again, through the fallbacks (FASTALIGN_NO_AVX2=1)."""
    env = {**os.environ, "FASTALIGN_NO_AVX2": "1"}
    switched = subprocess.run([sys.executable, "-c", "from fastalign import _C; print(_C.AVX2)"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert switched.stdout.strip() == "False", switched.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "not baseline_paths and not threads"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_cpp_reads_non_contiguous_inputs() -> None:
    g = np.random.default_rng(4)
    base = g.standard_normal((6, 3, 8)).astype(np.float32)
    view = base.transpose(0, 2, 1)  # [6, 8, 3], not C-contiguous
    ids = np.asfortranarray(g.integers(0, 4, size=(6, 8)))
    for strategy in STRATEGIES:
        got = _C.select_pairs(view, ids, strategy, 3)
        want = _C.select_pairs(np.ascontiguousarray(view), np.ascontiguousarray(ids), strategy, 3)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_cpp_is_safe_to_call_from_threads() -> None:
    # the extension keeps no shared state and runs without the GIL: concurrent calls must agree
    g = np.random.default_rng(6)
    rewards = g.standard_normal((64, 12, 8)).astype(np.float32)
    ids = g.integers(0, 8, size=(64, 12))
    want = {s: _C.select_pairs(rewards, ids, s, 5) for s in STRATEGIES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: (s, _C.select_pairs(rewards, ids, s, 5)), STRATEGIES * 4))
    for strategy, got in results:
        for a, b in zip(got, want[strategy]):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- determinism, inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["passive", "ee-ts", "bai-ts", "best-of-n"])
def test_deterministic_for_a_seed(backend: str, strategy: str) -> None:
    r = np.random.default_rng(2).standard_normal((64, 8, 6)).astype(np.float32)
    a = select_pairs(r, strategy=strategy, seed=42, backend=backend)
    b = select_pairs(r, strategy=strategy, seed=42, backend=backend)
    c = select_pairs(r, strategy=strategy, seed=43, backend=backend)
    np.testing.assert_array_equal(a.pairs, b.pairs)
    np.testing.assert_array_equal(a.heads, b.heads)
    assert not (np.array_equal(a.pairs, c.pairs) and np.array_equal(a.heads, c.heads))


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_torch_tensors(backend: str) -> None:
    r = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ids = torch.tensor([[0, 1, 2, 3, 3]] * 4, dtype=torch.int32)
    sel = select_pairs(r, ids=ids, strategy="uncertainty", backend=backend)
    want = select_pairs(r.float().numpy(), ids=ids.numpy().astype(np.int64), strategy="uncertainty", backend=backend)
    assert isinstance(sel, Selection) and sel.backend == backend and sel.strategy == "uncertainty"
    np.testing.assert_array_equal(sel.pairs, want.pairs)
    assert sel.pairs.dtype == np.int64 and sel.heads.dtype == np.int64 and sel.scores.dtype == np.float64


def test_auto_backend_prefers_cpp_and_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    r = np.random.default_rng(3).standard_normal((2, 3, 2)).astype(np.float32)
    assert select_pairs(r).backend == "cpp"
    monkeypatch.setattr(selection, "_cpp_module", lambda: None)
    monkeypatch.setattr(selection, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="numpy reference"):
        assert select_pairs(r).backend == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_pairs(r).backend == "numpy"
    with pytest.raises(ValueError, match="not built"):
        select_pairs(r, backend="cpp")


# ----------------------------------------------------------------------------- validation

GOOD = np.zeros((2, 3, 2), np.float32)
NAN = GOOD.copy()
NAN[1, 2, 0] = np.nan
INF = GOOD.copy()
INF[0, 1, 1] = np.inf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=np.zeros((2, 3), np.float32)), r"shape \[B, N, E\]"),
        (dict(rewards=np.zeros((2, 1, 3), np.float32)), "at least 2 responses.*N=1"),
        (dict(rewards=np.zeros((2, 3, 0), np.float32)), "at least one ensemble head"),
        (dict(rewards=NAN), r"finite, found nan at \[b, n, e\] = \[1, 2, 0\]"),
        (dict(rewards=INF), r"finite, found inf at \[b, n, e\] = \[0, 1, 1\]"),
        (dict(rewards=np.zeros((2, 3, 2), np.int64)), "floating-point"),
        (dict(ids=np.zeros((2, 4), np.int64)), r"ids must have shape \[B, N\] = \[2, 3\]"),
        (dict(ids=np.zeros((2, 3), np.float32)), "integer response ids"),
        (dict(strategy="thompson"), "unknown selection strategy 'thompson'.*ee-ts"),
        (dict(seed=-1), r"seed must be in \[0, 2\*\*64\)"),
        (dict(seed=2**64), r"seed must be in \[0, 2\*\*64\)"),
        (dict(seed=1.5), "seed must be an int"),
    ],
)
def test_bad_input_raises_clear_value_error(backend: str, kwargs: dict, match: str) -> None:
    call = dict(rewards=GOOD, ids=None, strategy="ee-ts", seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        select_pairs(**call, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("row_ids", [[0, 1, 2], [5, 5, 5]], ids=["valid-row", "row-without-pair"])
def test_non_finite_found_in_any_row_for_every_strategy(backend: str, strategy: str, row_ids: list[int]) -> None:
    # the C++ side validates some rules through their means and others by a scan: both must name it
    rewards = np.zeros((9, 3, 2), np.float32)
    rewards[6, 1, 1] = -np.inf
    rewards[7, 0, 0] = np.nan
    ids = np.tile(np.arange(3), (9, 1))
    ids[6] = row_ids
    with pytest.raises(ValueError, match=r"found -inf at \[b, n, e\] = \[6, 1, 1\]"):
        select_pairs(rewards, ids=ids, strategy=strategy, backend=backend)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        select_pairs(GOOD, backend="gpu")


@pytest.mark.parametrize(
    "rewards, ids, match",
    [
        (GOOD.astype(np.float64), None, "rewards must be float32, got float64"),
        (GOOD.tolist(), None, "rewards must be a numpy array, got list"),
        (GOOD, np.zeros((2, 3), np.int32), "ids must be int64, got int32"),
        (NAN, None, r"finite, found nan"),
        (GOOD, np.zeros((3, 3), np.int64), r"ids must have shape"),
    ],
)
def test_extension_validates_its_own_inputs(rewards, ids, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _C.select_pairs(rewards, ids, "passive", 0)
    if isinstance(rewards, np.ndarray):
        with pytest.raises(ValueError, match=match):
            select_pairs_numpy(rewards, ids, "passive", 0)
