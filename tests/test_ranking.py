"""Ranking: the catalog, encoding users and the lists for users the model cannot serve."""
import numpy as np
import torch

from recsys_spark import schema
from recsys_spark.baselines import fallback_lists
from recsys_spark.ranking import encode_users, fallback_list, item_catalog, popularity_rows
from test_model import _model


def test_encode_users_drops_shared_padding_and_reads_missing_profiles_as_unknown():
    m = _model().eval()
    histories = [np.array([3, 4, 5]), np.array([7])]
    full = m.user_vectors(torch.as_tensor(np.array([[0, 0, 0, 0, 0, 3, 4, 5], [0] * 7 + [7]])),
                          torch.tensor([[1, 2, 0], [0, 0, 0]]), torch.tensor([[0.5] * 5, [0.0] * 5]))
    got = encode_users(m, histories, [[1, 2], None], [[0.5] * 5, [1.0, 2.0]])  # short row: zeros
    assert torch.allclose(got, full, atol=1e-6)


def test_fallback_lists_rank_by_segment_with_global_backoff(spark):
    # Segment "1,1": 20 users who all have item 5, some item 6; segment "2,2" has too few users.
    # Popularity counts users: 3 users have item 7, 2 users item 8 (three times each).
    rows = [(u, [5, 6] if u % 2 else [5], [1, 1]) for u in range(20)]
    rows += [(100 + u, [7], [2, 2]) for u in range(3)] + [(110 + u, [8, 8, 8], [2, 2]) for u in range(2)]
    rows += [(200, [], [1, 1])]
    users = spark.createDataFrame(rows, "user_idx long, input array<int>, profile_cat array<int>")
    popular, segments = fallback_lists(users, depth=10, min_users=20)
    assert list(segments) == ["1,1"] and segments["1,1"].tolist() == [5, 6]
    assert popular.tolist() == [5, 6, 7, 8]
    cat = item_catalog(np.zeros((10, 2), dtype=np.float32), popular=popular, segments=segments)
    assert fallback_list(cat, [1, 1], np.array([5]), 3) == ([6], schema.SERVED_SEGMENT)
    cat["ineligible"][7] = True
    assert fallback_list(cat, [2, 2], np.array([], dtype=np.int64), 3) == ([5, 6, 8], schema.SERVED_POPULAR)


def test_popularity_lists_give_each_user_their_segments_or_everyones_unseen_eligible_items(spark):
    cat = item_catalog(np.zeros((10, 2), dtype=np.float32), item_ids=np.array([f"i{i}" for i in range(10)]),
                       popular=np.array([5, 6, 7, 8]), segments={"1,1": np.array([5, 6])})
    cat["ineligible"][7] = True
    users = spark.createDataFrame([("a", [5], [1, 1]), ("b", [], [2, 2]), ("c", None, None)],
                                  "user_id string, seen array<int>, profile_cat array<int>")
    got = sorted(tuple(r) for r in popularity_rows(users, 3, spark.sparkContext.broadcast(cat)).collect())
    # a: its segment's list without the seen item 5; b (a segment too small) and c: everyone's, without
    # the ineligible item 7.
    assert got == [("a", 1, "i6"), ("b", 1, "i5"), ("b", 2, "i6"), ("b", 3, "i8"),
                   ("c", 1, "i5"), ("c", 2, "i6"), ("c", 3, "i8")]


def test_campaign_top_keeps_each_campaigns_best_users_across_batches():
    """The running candidates equal an exact top-`keep` per campaign over all users, whatever the
    batching and however often the buffer is merged (here with a small memory budget too)."""
    from recsys_spark.ranking import CampaignTop

    rng = np.random.default_rng(3)
    probs = rng.random((1000, 4))
    keep = np.array([50, 0, 7, 300])
    for budget_mb in (256.0, 0.002):  # 0.002 MB: a merge after every ~65 users
        top = CampaignTop(np.where(keep > 0, keep, 0), budget_mb=budget_mb)
        for lo in range(0, 1000, 97):
            top.add(np.where(keep > 0, probs[lo: lo + 97], -np.inf), lo)
        vals, who = top.best()
        for c, k in enumerate(keep):
            if k:
                assert sorted(who[:k, c]) == sorted(np.argsort(-probs[:, c])[:k])
                assert np.allclose(vals[:k, c], np.sort(probs[:, c])[::-1][:k])
