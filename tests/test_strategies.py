"""Query strategies: one contract every strategy meets, then each picks what it should on made-up probabilities."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from cleanloop.errors import CleanloopError
from cleanloop.loops import active, strategies
from cleanloop.loops.strategies import (STRATEGIES, ActiveLab, Badge, Coverage, DiverseBatch, Entropy, LeastConfidence, Margin, Pool,
                                        RandomSampling, make_strategy)


def random_pool(n: int = 200, c: int = 4, d: int = 8, seed: int = 0) -> Pool:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), size=n)
    labelled = np.zeros(n, dtype=bool)
    labelled[rng.choice(n, size=n // 5, replace=False)] = True
    annotations = np.full((n, 2), np.nan)
    annotations[labelled, 0] = probs[labelled].argmax(1)
    return Pool(probs, labelled, rng.normal(size=(n, d)), annotations)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
class TestStrategyContract:
    """Every strategy: n unique pool indices, unlabelled ones only (unless it re-labels), seeded."""

    def test_returns_n_unique_indices_from_the_pool(self, name):
        pool = random_pool()
        idx = make_strategy(name).query(pool, 16, np.random.default_rng(1))
        assert idx.dtype == np.int64 and idx.shape == (16,) and len(set(idx.tolist())) == 16
        assert ((0 <= idx) & (idx < len(pool.probs))).all()

    def test_never_labelled_ones_unless_it_relabels(self, name):
        pool = random_pool()
        s = make_strategy(name)
        idx = s.query(pool, 60, np.random.default_rng(1))
        assert s.relabels or not pool.labelled[idx].any()

    def test_deterministic_under_a_seed(self, name):
        pool = random_pool()
        a = make_strategy(name).query(pool, 16, np.random.default_rng(7))
        b = make_strategy(name).query(pool, 16, np.random.default_rng(7))
        np.testing.assert_array_equal(a, b)

    def test_asking_for_more_than_the_pool_returns_what_there_is(self, name):
        pool = random_pool(n=30)
        s = make_strategy(name)
        idx = s.query(pool, 500, np.random.default_rng(0))
        assert len(idx) == (30 if s.relabels else int((~pool.labelled).sum()))

    def test_bad_input_raises_an_actionable_error(self, name):
        pool = random_pool()
        with pytest.raises(CleanloopError, match="n must be at least 1"):
            make_strategy(name).query(pool, 0, np.random.default_rng(0))
        with pytest.raises(CleanloopError, match="labelled must be a bool array"):
            make_strategy(name).query(Pool(pool.probs, pool.labelled[:5]), 3, np.random.default_rng(0))


    def test_reads_embeddings_only_when_it_says_so(self, name):
        pool = random_pool()  # the loops compute embeddings only for a strategy with needs_embeddings
        bare = Pool(pool.probs, pool.labelled, None, pool.annotations)
        s = make_strategy(name)
        if s.needs_embeddings:
            with pytest.raises(CleanloopError, match=f"the {name} strategy needs pool embeddings"):
                s.query(bare, 8, np.random.default_rng(0))
        else:
            assert len(s.query(bare, 8, np.random.default_rng(0))) == 8


def test_a_named_subclass_is_registered_where_it_is_defined():
    class Longest(strategies.ScoreStrategy):
        name = "test_longest"

        @staticmethod
        def score(probs):
            return -probs.max(axis=1)

    try:
        assert STRATEGIES["test_longest"] is Longest
        assert make_strategy("test_longest").query(made_up_pool(), 1, np.random.default_rng(0)).tolist() == [1]
        with pytest.raises(CleanloopError, match="two query strategies named 'margin'"):
            type("Again", (strategies.ScoreStrategy,), {"name": "margin", "score": staticmethod(lambda p: p[:, 0])})
    finally:
        STRATEGIES.pop("test_longest", None)
    assert STRATEGIES["margin"] is Margin


def test_unknown_strategy_names_the_choices():
    with pytest.raises(CleanloopError, match="use one of activelab, badge, coverage, diversity"):
        make_strategy("uncertainty")


# rows: 0 confident; 1 flattest (top 0.40); 2 closest top-2 call (gap 0.01); 3 highest entropy (spread
# over four); 4 flatter than all but labelled
MADE_UP = np.array([
    [0.97, 0.01, 0.01, 0.01],
    [0.40, 0.30, 0.30, 0.00],
    [0.48, 0.47, 0.05, 0.00],
    [0.41, 0.20, 0.20, 0.19],
    [0.25, 0.25, 0.25, 0.25],
])


def made_up_pool() -> Pool:
    return Pool(MADE_UP, np.array([False, False, False, False, True]))


def pick1(strategy) -> int:
    return int(strategy.query(made_up_pool(), 1, np.random.default_rng(0))[0])


def test_least_confidence_picks_the_flattest_row():
    assert pick1(LeastConfidence()) == 1


def test_margin_picks_the_smallest_top2_gap():
    assert pick1(Margin()) == 2


def test_entropy_picks_the_highest_entropy():
    assert pick1(Entropy()) == 3


def test_all_uncertainty_strategies_skip_the_labelled_flattest_row():
    for s in (LeastConfidence(), Margin(), Entropy()):
        assert 4 not in s.query(made_up_pool(), 4, np.random.default_rng(0)).tolist()


def test_ties_are_broken_by_the_generator_not_by_position():
    pool = Pool(np.full((50, 2), 0.5), np.zeros(50, dtype=bool))
    picks = {int(LeastConfidence().query(pool, 1, np.random.default_rng(s))[0]) for s in range(10)}
    assert len(picks) > 1


def test_random_is_uniform_over_the_unlabelled():
    pool = random_pool()
    counts = np.zeros(len(pool.probs))
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts[RandomSampling().query(pool, 10, rng)] += 1
    assert counts[pool.labelled].sum() == 0 and (counts[~pool.labelled] > 0).mean() > 0.95


def test_diversity_spreads_the_batch_over_clusters():
    # three tight clusters of 30; the most uncertain 40 rows all sit in cluster 0, a bit less in 1 and 2
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    cluster = np.repeat([0, 1, 2], 30)
    emb = centres[cluster] + rng.normal(scale=0.1, size=(90, 3))
    gap = np.where(cluster == 0, 0.01, 0.2) + rng.uniform(0, 0.005, size=90)
    probs = np.stack([(1 + gap) / 2, (1 - gap) / 2], axis=1)
    pool = Pool(probs, np.zeros(90, dtype=bool), emb)
    margin = Margin().query(pool, 3, np.random.default_rng(0))
    diverse = DiverseBatch(candidates=30).query(pool, 3, np.random.default_rng(0))
    assert set(cluster[margin]) == {0}  # plain uncertainty: three near-duplicates
    assert set(cluster[diverse]) == {0, 1, 2}  # one per cluster
    assert cluster[diverse[0]] == 0  # most uncertain first


def three_clusters(sizes=(60, 20, 10), seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    cluster = np.repeat([0, 1, 2], sizes)
    return centres[cluster] + rng.normal(scale=0.5, size=(len(cluster), 3)), cluster


def test_coverage_takes_the_most_typical_row_of_each_cluster_biggest_first():
    emb, cluster = three_clusters()
    pool = Pool(np.full((len(emb), 2), 0.5), np.zeros(len(emb), dtype=bool), emb)
    idx = Coverage().query(pool, 3, np.random.default_rng(0))
    assert cluster[idx].tolist() == [0, 1, 2]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in idx:  # nearer its cluster's centre than most of the cluster
        members = unit[cluster == cluster[i]]
        d = np.linalg.norm(members - members.mean(0), axis=1)
        assert np.linalg.norm(unit[i] - members.mean(0)) <= np.quantile(d, 0.2)


def test_badge_picks_uncertain_rows_from_different_clusters():
    # cluster 0 is confidently predicted; clusters 1 and 2 are close calls: BADGE asks in 1 and 2, one each
    emb, cluster = three_clusters((10, 40, 40))
    conf = np.where(cluster == 0, 0.99, 0.55)
    probs = np.stack([conf, 1 - conf], axis=1)
    idx = Badge().query(Pool(probs, np.zeros(len(emb), dtype=bool), emb), 2, np.random.default_rng(0))
    assert sorted(cluster[idx].tolist()) == [1, 2]


def test_badge_and_coverage_without_embeddings_say_what_to_pass():
    for s in (Badge(), Coverage()):
        with pytest.raises(CleanloopError, match=f"the {s.name} strategy needs pool embeddings"):
            s.query(made_up_pool(), 1, np.random.default_rng(0))


def test_diversity_without_embeddings_says_what_to_pass():
    with pytest.raises(CleanloopError, match="needs pool embeddings"):
        DiverseBatch().query(made_up_pool(), 2, np.random.default_rng(0))


def test_activelab_prefers_relabelling_a_disputed_example_over_a_confident_new_one():
    # 30 examples labelled once, by annotator a, and the model agrees with a; example 0 was also
    # labelled by annotator b, who disagreed, and the model is split on it. 10 unlabelled examples
    # the model is sure of. A third label on example 0 is worth more than a label on any new one.
    c, n_lab, n_new = 3, 30, 10
    rng = np.random.default_rng(0)
    truth = rng.integers(0, c, size=n_lab + n_new)
    probs = np.full((n_lab + n_new, c), 0.02)
    probs[np.arange(n_lab + n_new), truth] = 0.96
    ann = np.full((n_lab + n_new, 2), np.nan)
    ann[:n_lab, 0] = truth[:n_lab]
    ann[0] = [0, 1]
    probs[0] = [0.45, 0.45, 0.10]
    labelled = np.arange(n_lab + n_new) < n_lab
    idx = ActiveLab().query(Pool(probs, labelled, None, ann), 1, np.random.default_rng(0))
    assert idx.tolist() == [0]
    # the undisputed labelled examples come last: new examples first
    idx = ActiveLab().query(Pool(probs, labelled, None, ann), 11, np.random.default_rng(0))
    assert idx[0] == 0 and set(idx[1:].tolist()) == set(range(n_lab, n_lab + n_new))
    # with nothing labelled it ranks new examples by the model's uncertainty alone
    probs[n_lab + 3] = [0.34, 0.33, 0.33]
    unl = Pool(probs[n_lab:], np.zeros(n_new, dtype=bool))
    assert ActiveLab().query(unl, 1, np.random.default_rng(0)).tolist() == [3]


def test_activelab_needs_annotations_for_labelled_rows():
    with pytest.raises(CleanloopError, match="needs pool.annotations"):
        ActiveLab().query(made_up_pool(), 1, np.random.default_rng(0))


def test_annotation_matrix_has_the_seed_and_each_annotators_latest_vote():
    from cleanloop.labeling.journal import Vote

    m = active.annotation_matrix(["a", "b", "c"], {"a": 1}, [Vote("b", "x", "neg"), Vote("b", "x", "pos"),
                                                          Vote("c", "y", None, "discarded")], ["neg", "pos"])
    assert m.shape == (3, 3) and m[0, 0] == 1 and m[1, 1] == 1 and np.isnan(m[2]).all()


def test_doctests():
    for module in (strategies, active):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
