"""The top-K kernel and business rules (pure torch, no JVM)."""
import numpy as np
import torch

from recsys_spark.topk import block_rows, cap_per_category, explain, explore, mmr, recommend, topk_excluding


def _brute(users, items, seen, k, ineligible=()):
    """Reference ranking by a full stable sort: score descending, then smaller item id."""
    full = (users @ items.T).double().numpy()
    out = []
    for u in range(len(users)):
        row = full[u].copy()
        row[0] = -np.inf
        row[list(seen[u])] = -np.inf
        row[list(ineligible)] = -np.inf
        order = np.lexsort((np.arange(len(row)), -row))
        out.append([int(i) for i in order[:k] if np.isfinite(row[i])])
    return out


def test_topk_excludes_seen_and_padding_and_breaks_ties_by_item_id():
    items = torch.tensor([[9.0], [1.0], [2.0], [2.0], [2.0], [0.5]])  # item 0 is padding
    users = torch.tensor([[1.0], [1.0]])
    top, scores = topk_excluding(users, items, [np.array([2]), np.array([], dtype=np.int64)], 3)
    assert top.tolist() == [[3, 4, 1], [2, 3, 4]]
    assert scores[0].tolist() == [2.0, 2.0, 1.0]


def test_ties_crowding_the_kth_place_keep_the_smallest_ids():
    items = torch.tensor([[0.0]] + [[1.0]] * 50)  # 50 items with the same score
    top, _ = topk_excluding(torch.ones(2, 1), items, [np.array([3]), np.array([])], 4)
    assert top.tolist() == [[1, 2, 4, 5], [1, 2, 3, 4]]


def test_topk_fills_with_minus_one_when_catalog_is_exhausted():
    items = torch.tensor([[0.0], [1.0], [2.0]])
    top, scores = topk_excluding(torch.ones(1, 1), items, [np.array([1])], 3)
    assert top.tolist() == [[2, -1, -1]]
    assert np.isneginf(scores[0, 1:]).all()


def test_topk_matches_a_full_sort_on_random_data_across_blocks():
    rng = np.random.default_rng(1)
    items = torch.as_tensor(rng.normal(size=(200, 8)), dtype=torch.float32)
    users = torch.as_tensor(rng.normal(size=(50, 8)), dtype=torch.float32)
    seen = [rng.choice(np.arange(1, 200), 10, replace=False) for _ in range(50)]
    top, _ = topk_excluding(users, items, seen, 10, block=16)
    assert top.tolist() == _brute(users, items, seen, 10)


def test_ineligible_items_are_never_recommended():
    rng = np.random.default_rng(2)
    items = torch.as_tensor(rng.normal(size=(100, 4)), dtype=torch.float32)
    users = torch.as_tensor(rng.normal(size=(30, 4)), dtype=torch.float32)
    blocked = [5, 17, 42, 43, 99]
    ineligible = torch.zeros(100, dtype=torch.bool)
    ineligible[blocked] = True
    seen = [np.array([1, 2])] * 30
    top, _ = recommend(users, items, seen, 20, ineligible=ineligible)
    assert top.tolist() == _brute(users, items, seen, 20, blocked)


def test_block_rows_bounds_memory():
    assert block_rows(100_000, 256) == 671
    assert block_rows(10_000, 8) == 209
    assert block_rows(100_000) == 32  # never fewer than 32 users: the matmul needs rows


def test_category_cap_is_the_greedy_capped_list_of_the_full_ranking():
    rng = np.random.default_rng(3)
    n_items, k, cap = 300, 10, 2
    items = torch.as_tensor(rng.normal(size=(n_items, 6)), dtype=torch.float32)
    users = torch.as_tensor(rng.normal(size=(40, 6)), dtype=torch.float32)
    categories = rng.integers(0, 4, n_items)  # few categories: the 4k pool is often not enough
    seen = [rng.choice(np.arange(1, n_items), 5, replace=False) for _ in range(40)]
    top, _ = recommend(users, items, seen, k, categories=categories, max_per_category=cap)
    full = _brute(users, items, seen, n_items)
    for u in range(40):
        want, count = [], {}
        for i in full[u]:
            c = categories[i]
            if count.get(c, 0) < cap:
                want.append(i)
                count[c] = count.get(c, 0) + 1
        want = want[:k]
        assert top[u].tolist() == want + [-1] * (k - len(want))  # 4 categories x 2 = 8 < k: -1 fill


def test_category_cap_on_a_hand_example():
    cand = np.array([[1, 2, 3, 4, 5, -1]])
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, -np.inf]])
    categories = np.array([0, 7, 7, 7, 8, 8])
    items, sc, complete = cap_per_category(cand, scores, categories, 3, 2)
    assert items.tolist() == [[1, 2, 4]] and sc.tolist() == [[5.0, 4.0, 2.0]] and complete.all()


def test_mmr_with_lambda_one_is_the_relevance_order_and_lower_lambda_diversifies():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.99, 0.01], [0.98, 0.02], [0.0, 1.0]])
    cand = np.array([[1, 2, 3, 4]])
    rel = np.array([[1.0, 0.99, 0.98, 0.5]])
    assert mmr(cand, rel, items, 3, 1.0)[0].tolist() == [[1, 2, 3]]
    top, scores = mmr(cand, rel, items, 3, 0.5)
    assert top.tolist()[0][:2] == [1, 4]  # the orthogonal item comes second
    assert scores[0, 1] == 0.5  # scores stay the relevance scores


def test_explanations_come_from_the_users_own_history():
    rng = np.random.default_rng(4)
    items = torch.as_tensor(rng.normal(size=(80, 8)), dtype=torch.float32)
    history = [rng.choice(np.arange(1, 80), rng.integers(0, 12), replace=True) for _ in range(25)]
    top, _ = topk_excluding(torch.as_tensor(rng.normal(size=(25, 8)), dtype=torch.float32), items, history, 5)
    because = explain(top, history, items, 3)
    for u in range(25):
        h = set(int(i) for i in history[u])
        for j in range(5):
            assert set(because[u][j]) <= h
            assert len(because[u][j]) == min(3, len(h))
            assert len(set(because[u][j])) == len(because[u][j])


def test_explanation_picks_the_most_similar_history_item():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    because = explain(np.array([[3, 4]]), [np.array([1, 2])], items, 1)
    assert because == [[[1], [2]]]


def test_wide_catalog_fast_path_matches_a_full_sort_with_ties_and_masks():
    # Wide rows take the pre-filtered path (candidates above a bound from every 8th column).
    rng = np.random.default_rng(5)
    n_items = 6000
    items = torch.as_tensor(rng.integers(-3, 4, size=(n_items, 3)), dtype=torch.float32)  # many ties
    users = torch.as_tensor(rng.normal(size=(40, 3)), dtype=torch.float32)
    users[:5] = 0.0  # all scores tie for these users
    seen = [rng.choice(np.arange(1, n_items), 50, replace=False) for _ in range(40)]
    ineligible = torch.zeros(n_items, dtype=torch.bool)
    ineligible[rng.choice(n_items, 500, replace=False)] = True
    top, _ = recommend(users, items, seen, 25, ineligible=ineligible)
    assert top.tolist() == _brute(users, items, seen, 25, torch.nonzero(ineligible).flatten().tolist())


def test_reserve_fresh_guarantees_slots_by_the_users_own_scores():
    from recsys_spark.topk import reserve_fresh, topk_excluding

    g = torch.Generator().manual_seed(0)
    items = torch.randn(60, 8, generator=g)
    users = torch.randn(20, 8, generator=g)
    fresh = torch.zeros(60, dtype=torch.bool)
    fresh[50:] = True
    seen = [np.array([50, 1, 2]) if u % 2 else np.array([3]) for u in range(20)]
    top, scores = topk_excluding(users, items, seen, 10)
    got, got_scores = reserve_fresh(top, scores, users, items, seen, fresh, 2)
    full = (users @ items.T).numpy()
    for u in range(20):
        row = got[u]
        assert len(set(row.tolist())) == 10 and not set(row.tolist()) & set(seen[u].tolist())
        assert (np.diff(got_scores[u]) <= 1e-6).all()  # still sorted by score
        n_fresh = int(fresh[torch.as_tensor(row)].sum())
        assert n_fresh >= 2
        # The fresh items are the user's best unseen fresh ones; the rest are the best non-fresh ones.
        cand = [i for i in range(50, 60) if i not in seen[u]]
        best_fresh = sorted(cand, key=lambda i: -full[u, i])[:max(2, n_fresh)]
        assert set(i for i in row if i >= 50) == set(best_fresh)
        rest = [i for i in row if i < 50]
        assert set(rest) == set(i for i in top[u] if i < 50 and i in rest) and len(rest) == 10 - n_fresh
        assert np.allclose(got_scores[u], full[u, row], atol=1e-5)
    # Nothing to do when no item is fresh, and ineligible fresh items are never added.
    same = reserve_fresh(top, scores, users, items, seen, torch.zeros(60, dtype=torch.bool), 2)
    assert (same[0] == top).all()
    inel = torch.zeros(60, dtype=torch.bool)
    inel[50:59] = True
    t2, s2 = topk_excluding(users, items, seen, 10, ineligible=inel)
    only_one, _ = reserve_fresh(t2, s2, users, items, seen, fresh, 2, ineligible=inel)
    assert all((row == 59).sum() == 1 and not ((row >= 50) & (row < 59)).any() for row in only_one)


def test_exploration_draws_each_pool_item_at_its_propensity_and_keeps_the_head():
    users, exploit, slots, pool = 20000, 7, 3, 12
    cand = np.tile(np.arange(100, 100 + exploit + pool), (users, 1))
    cand[-1000:, exploit + 5:] = -1  # a short pool: 5 candidates left for these users
    scores = -np.arange(exploit + pool, dtype=np.float64)[None].repeat(users, 0)
    top, sc, prop = explore(cand, scores, exploit, slots, np.arange(users), seed=11)
    assert top.shape == (users, exploit + slots)
    assert (top[:, :exploit] == cand[:, :exploit]).all() and (prop[:, :exploit] == 1.0).all()
    # Drawn items: distinct, from the pool, in rank order (scores non-increasing along the list).
    assert (np.diff(sc, axis=1) <= 0).all()
    assert all(len(set(row)) == len(row) for row in top[:50])
    full = slice(0, users - 1000)
    assert np.allclose(prop[full, exploit:], slots / pool) and np.allclose(prop[-1000:, exploit:], slots / 5)
    # Each pool item is shown to about slots/pool of the users (a uniform draw), within 4 sd.
    shown = np.array([(top[full, exploit:] == 100 + exploit + j).any(1).mean() for j in range(pool)])
    sd = np.sqrt(slots / pool * (1 - slots / pool) / (users - 1000))
    assert np.abs(shown - slots / pool).max() < 4 * sd
    # Repeatable for the same seed and user, whatever the batch; another seed draws differently.
    again, _, _ = explore(cand[::-1], scores, exploit, slots, np.arange(users)[::-1], seed=11)
    assert (again[::-1] == top).all()
    other, _, _ = explore(cand, scores, exploit, slots, np.arange(users), seed=12)
    assert (other[full] != top[full]).any(1).mean() > 0.5
