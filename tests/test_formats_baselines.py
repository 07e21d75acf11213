"""Public-dataset input formats, the Spark metrics, and the ALS / item-kNN baselines."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import ingest, schema, tables
from recsys_spark.baselines import als_fit_topk, interactions, item_knn_topk, item_neighbors
from recsys_spark.evaluate import item_exposures, paired_difference, spark_beyond_accuracy, spark_metrics, user_ndcgs
from recsys_spark.metrics import beyond_accuracy, mrr_at_k, ndcg_at_k, ndcg_per_user, recall_at_k


def _events(spark, cfg):
    return tables.read(spark, tables.location(cfg.tables_root, schema.EVENTS))


def _sequences(spark, cfg):
    rows = _events(spark, cfg).orderBy("ts").collect()
    out = {}
    for r in rows:
        out.setdefault(r.user_id, []).append(r.item_id)
    return out


@pytest.mark.parametrize("text", [
    "1 10\n1 11\n2 12\n1 12\n2 10\n",    # `user item` per line
    "1 10 11 12\n2 12 10\n",             # `user item1 item2 ...` per line
])
def test_sasrec_text_formats_keep_the_order(spark, tmp_path, text):
    f = tmp_path / "data.txt"
    f.write_text(text)
    cfg = make_config(tmp_path, ingest={"events": str(f)})
    report = ingest.run(spark, cfg)
    assert report.inserted_rows == 5 and report.quarantined_rows == 0
    assert _sequences(spark, cfg) == {"1": ["10", "11", "12"], "2": ["12", "10"]}


def test_sasrec_line_without_items_is_quarantined(spark, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("1 10 11\n7\n")
    cfg = make_config(tmp_path, ingest={"events": str(f)})
    report = ingest.run(spark, cfg)
    assert (report.inserted_rows, report.quarantined_rows) == (2, 1)


def test_movielens_dat_and_csv(spark, tmp_path):
    dat = tmp_path / "dat" / "ratings.dat"
    dat.parent.mkdir()
    dat.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::x::978300000\n")
    cfg = make_config(tmp_path / "a", ingest={"events": str(dat)})
    report = ingest.run(spark, cfg)
    assert (report.inserted_rows, report.quarantined_rows) == (2, 1)  # rating 'x' is not a number
    ev = {r.item_id: r for r in _events(spark, cfg).collect()}
    assert ev["1193"].rating == 5.0 and ev["1193"].event_type == "rating"
    assert str(ev["1193"].ts) == "2000-12-31 22:12:40"  # 978300760 s after the epoch, UTC
    csv = tmp_path / "csv" / "ratings.csv"
    csv.parent.mkdir()
    csv.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    cfg = make_config(tmp_path / "b", ingest={"events": str(csv)})
    assert ingest.run(spark, cfg).inserted_rows == 2
    assert _sequences(spark, cfg) == {"1": ["31", "1029"]}


def test_spark_metrics_match_the_numpy_reference_on_random_data(spark):
    rng = np.random.default_rng(5)
    n_users, n_items, k = 300, 50, 20
    ranked = np.stack([rng.permutation(np.arange(1, n_items))[:k] for _ in range(n_users)])
    targets = rng.integers(1, n_items, n_users)
    recs = spark.createDataFrame(
        [(u, r + 1, int(ranked[u, r])) for u in range(n_users) for r in range(k)], "user_idx long, rank int, item_idx long")
    tg = spark.createDataFrame([(u, int(t)) for u, t in enumerate(targets)], "user_idx long, target long")
    got = spark_metrics(recs, tg, [1, 5, 20])
    assert got["n_users"] == n_users
    for kk in (1, 5, 20):
        assert got[f"recall@{kk}"] == pytest.approx(recall_at_k(ranked, targets, kk))
        assert got[f"ndcg@{kk}"] == pytest.approx(ndcg_at_k(ranked, targets, kk))
        assert got[f"mrr@{kk}"] == pytest.approx(mrr_at_k(ranked, targets, kk))
    # Beyond accuracy: skewed exposure (a Zipf-like pick of items) and a few short lists.
    pop = np.concatenate([[0], rng.integers(0, 200, n_items - 1)]).astype(float)
    cats = rng.integers(0, 6, n_items)
    skewed = np.stack([rng.choice(np.arange(1, n_items), k, replace=False, p=_zipf(n_items - 1)) for _ in range(n_users)])
    skewed[:10, 15:] = -1
    recs2 = spark.createDataFrame([(u, r + 1, int(skewed[u, r])) for u in range(n_users) for r in range(k) if skewed[u, r] >= 0],
                                  "user_idx long, rank int, item_idx long")
    got = spark_beyond_accuracy(recs2, item_exposures(recs2, [5, 20], n_items), pop, n_users, cats)
    for kk in (5, 20):
        assert got[kk] == pytest.approx(beyond_accuracy(skewed, kk, n_items, pop, n_users, cats))


def _zipf(n):
    w = 1.0 / np.arange(1, n + 1)
    return w / w.sum()


def test_beyond_accuracy_reference_on_a_hand_example():
    ranked = np.array([[1, 2], [1, 3]])  # item 1 twice, 2 and 3 once, 4 never
    pop = np.array([0.0, 8.0, 4.0, 2.0, 1.0])
    cats = np.array([0, 5, 5, 6, 6])
    b = beyond_accuracy(ranked, 2, 5, pop, 8, cats)
    assert b["coverage"] == pytest.approx(3 / 4)
    # exposures sorted [0, 1, 1, 2]: G = sum((2i - n - 1) e_i) / (n sum e) = (-1 + 1 + 3*2) / (4*4)
    assert b["gini"] == pytest.approx(6 / 16)
    assert b["novelty"] == pytest.approx(np.mean([0.0, 1.0, 0.0, 2.0]))
    assert b["ild"] == pytest.approx(0.5)  # user 0 same category, user 1 different
    assert b["pop_share"] == pytest.approx(0.5) and b["pop_interaction_share"] == pytest.approx(8 / 15)


def _users(spark, hist):
    return spark.createDataFrame([(u, h, h) for u, h in hist.items()], "user_idx long, input array<int>, seen array<int>")


def test_item_neighbors_are_cosine_co_occurrence(spark):
    users = _users(spark, {0: [1, 2], 1: [1, 2], 2: [1, 3], 3: [4]})
    nb = {(r.item_idx, r.neighbor): r.sim for r in item_neighbors(users, 10).collect()}
    assert nb[(1, 2)] == pytest.approx(2 / np.sqrt(3 * 2))
    assert nb[(1, 3)] == pytest.approx(1 / np.sqrt(3 * 1))
    assert (1, 4) not in nb and (4, 1) not in nb
    recs, _ = item_knn_topk(spark, _users(spark, {9: [1]}), n_items=5, k=3)
    assert [r.item_idx for r in recs.orderBy("rank").collect()] == [2, 3, 4]  # 4: no similarity, ties by id


def test_the_neighbor_table_keeps_each_items_most_similar_neighbours_in_order():
    import pandas as pd

    from recsys_spark.baselines import neighbor_table

    rows = pd.DataFrame([(1, 4, 0.2), (1, 2, 0.5), (1, 3, 0.5), (1, 5, 0.9), (2, 1, 0.3), (3, 9, 0.8), (9, 1, 0.8)],
                        columns=["item_idx", "neighbor", "sim"])
    idx, sim = neighbor_table(rows, n_items=6, n_neighbors=3)
    assert idx[1].tolist() == [5, 2, 3]  # falling similarity, ties by the smaller id, the 4th dropped
    assert sim[1].tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert idx[2].tolist() == [1, 0, 0] and sim[2].tolist() == pytest.approx([0.3, 0, 0])  # 0: padding
    assert idx[3].tolist() == [0, 0, 0]  # item 9 is outside the catalog, as a neighbour and as an item
    assert idx.shape == (6, 3)


def test_als_recommends_unseen_items_that_co_occur(spark):
    # Two clear communities: {1,2,3} and {4,5,6}.
    hist = {u: ([1, 2, 3] if u % 2 == 0 else [4, 5, 6]) for u in range(40)}
    hist[100] = [1, 2]
    hist[101] = [4, 5]
    users = _users(spark, hist)
    res = als_fit_topk(interactions(users), users, n_items=7, k=1, rank=4, reg=0.01, alpha=10.0, max_iter=10)
    top = {r.user_idx: r.item_idx for r in res.recs.where(F.col("user_idx") >= 100).collect()}
    assert top == {100: 3, 101: 6}
    seen = {r.user_idx: r.item_idx for r in res.recs.where(F.col("user_idx") < 2).collect()}
    assert seen[0] not in (1, 2, 3) and seen[1] not in (4, 5, 6)


def test_an_als_grid_fitted_two_at_a_time_gives_each_point_its_own_fit(spark):
    from recsys_spark.baselines import als_factor_grid, als_model, item_factors

    hist = {u: ([1, 2, 3] if u % 2 == 0 else [4, 5, 6]) + [7 + u % 5] for u in range(40)}
    train = interactions(_users(spark, hist)).persist()
    grid = als_factor_grid(train, 12, {"ranks": [2, 4], "reg_params": [0.01, 1.0], "alphas": [10.0]}, max_iter=5)
    assert [(g["rank"], g["regParam"]) for g in grid] == [(2, 0.01), (2, 1.0), (4, 0.01), (4, 1.0)]
    for g in grid:  # the same factors as the point fitted alone
        alone = item_factors(als_model(train, g["rank"], g["regParam"], g["alpha"], max_iter=5), 12)
        np.testing.assert_array_equal(g["factors"], alone)
    train.unpersist()


@pytest.mark.slow
def test_quality_benchmark_writes_the_result_table(spark, tmp_path, capsys):
    """The benchmark command end to end on a small SASRec-format file (in this process, on the
    tests' Spark session)."""
    from benchmarks import quality

    rng = np.random.default_rng(0)
    successor = rng.permutation(60)  # every item has one successor and one predecessor
    lines = []
    for u in range(1, 301):
        item = int(rng.integers(0, 60))
        seq = []
        for _ in range(int(rng.integers(6, 16))):
            seq.append(item + 1)
            item = int(successor[item]) if rng.random() < 0.8 else int(rng.integers(0, 60))
        lines.append(" ".join(map(str, [u] + seq)))
    data = tmp_path / "tiny.txt"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "result.json"
    argv = [str(data), "--out", str(out),
            "--set", "train.epochs=10", "--set", "train.d_model=32", "--set", "features.max_seq_len=20",
            "--set", "train.batch_size=16", "--set", "train.lr=0.005", "--set", "train.patience=10",
            "--set", "evaluate.als_ranks=[16]", "--set", "evaluate.als_reg_params=[0.1]",
            "--set", "evaluate.als_alphas=[1.0]", "--set", "evaluate.als_max_iter=4",
            "--set", "spark.shuffle_partitions=2",
            "--set", "tracking.enabled=false"]  # the benchmark's figures are its result file
    assert quality.main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["dataset"] == "tiny.txt"
    assert [r["model"] for r in result["rows"]] == ["attention", "popularity", "als", "item_knn"]
    for row in result["rows"]:
        assert set(row) == {"model", "recall@1", "recall@10", "recall@20", "ndcg@10", "ndcg@20",
                            "train_s", "score_s", "peak_rss_mb", "coverage@10", "gini@10", "novelty@10",
                            "ild@10", "pop_share@10", "pop_interaction_share@10"}
        assert 0 <= row["ndcg@10"] <= row["recall@10"] <= row["recall@20"] <= 1
        assert row["peak_rss_mb"] > 0
    by = {r["model"]: r for r in result["rows"]}
    # The successor structure is learnable by sequence models and item-kNN, not by popularity.
    assert by["attention"]["ndcg@10"] > 1.5 * by["popularity"]["ndcg@10"]
    assert "attention" in stdout and "item_knn" in stdout
    # ALS is fitted with the configured iterations (the grid records them; the refit uses the same).
    assert result["als"]["best"]["maxIter"] == 4 and [p["maxIter"] for p in result["als"]["grid"]] == [4]
    # How fast it got there, from its own history.
    kept = max(result["attention_history"], key=lambda e: e["valid_ndcg@10"])
    assert result["convergence"]["kept_epoch"] == kept["epoch"]
    assert result["convergence"]["epoch"] <= kept["epoch"]
    # conf/bench.yaml serves a blend with ALS where validation prefers it: rank 0 tried the grid's
    # point at every share, starting from the kept epoch's figure, and the result records the choice.
    blend = result["collaborative"]
    assert blend["attention_valid_ndcg@10"] == pytest.approx(kept["valid_ndcg@10"], abs=1e-6)
    assert [t["share"] for t in blend["tried"]] == [0.25, 0.5, 0.75, 1.0]
    assert blend["valid_ndcg@10"] >= blend["attention_valid_ndcg@10"]
    assert (blend["chosen"] == "attention") == (result["model_config"]["collaborative_rank"] == 0)
    # The ALS baseline is chosen on the figures that blend step measured for ALS alone, not fitted again.
    assert result["als"]["validated_in"] == "train"
    assert [g["valid_ndcg@10"] for g in result["als"]["grid"]] == [t["valid_ndcg@10"] for t in blend["tried"]
                                                                 if t["share"] == 1.0]
    # The served model against each baseline on the same test users: the gap of the two means, and
    # an interval.
    assert set(result["paired"]) == {"popularity", "als", "item_knn"}
    for name, paired in result["paired"].items():
        assert paired["ndcg@10_diff"] == pytest.approx(by["attention"]["ndcg@10"] - by[name]["ndcg@10"], abs=2e-4)
        assert paired["halfwidth"] > 0 and paired["users"] == result["n_test_users"]
    assert "attention - popularity: NDCG@10 +" in stdout


def test_the_paired_difference_is_the_mean_per_user_gap_with_its_interval(spark):
    # Two models ranking the same 400 users: b lists the target one place lower than a does for
    # most users, so their separate intervals overlap while the paired one lies above 0.
    rng = np.random.default_rng(7)
    n_users, n_items, k = 400, 60, 10
    targets = rng.integers(1, n_items, n_users)
    ranked_a = np.stack([rng.permutation(np.arange(1, n_items))[:k] for _ in range(n_users)])
    ranked_b = np.roll(ranked_a, 1, axis=1)
    ranked_b[:, 0] = n_items + 1  # an item nobody has as target
    ranked_b[:40] = ranked_a[:40]  # the same list for some users
    tg = spark.createDataFrame([(u, int(t)) for u, t in enumerate(targets)], "user_idx long, target long")

    def recs(ranked):
        return spark.createDataFrame([(u, r + 1, int(ranked[u, r])) for u in range(n_users) for r in range(k)],
                                     "user_idx long, rank int, item_idx long")

    got = paired_difference(user_ndcgs(recs(ranked_a), tg), user_ndcgs(recs(ranked_b), tg))
    gap = ndcg_per_user(ranked_a, targets, k) - ndcg_per_user(ranked_b, targets, k)
    assert got["users"] == n_users
    assert got["ndcg@10_diff"] == pytest.approx(gap.mean())
    assert got["halfwidth"] == pytest.approx(1.96 * gap.std(ddof=1) / np.sqrt(n_users))
    assert got["ndcg@10_diff"] > got["halfwidth"] > 0


def test_time_to_95_percent_is_the_first_epoch_within_the_share_of_the_kept_one():
    from benchmarks.convergence import time_to_share

    history = [{"epoch": 1, "seconds": 10.0, "valid_ndcg@10": 0.10},
               {"epoch": 2, "seconds": 12.0, "valid_ndcg@10": 0.19},
               {"epoch": 3, "seconds": 11.0, "valid_ndcg@10": 0.18},
               {"epoch": 4, "seconds": 13.0},  # not validated
               {"epoch": 5, "seconds": 9.0, "valid_ndcg@10": 0.20}]
    c = time_to_share(history, 0.95)
    assert (c["kept_epoch"], c["kept_s"]) == (5, 55.0)
    assert (c["epoch"], c["seconds"], c["ndcg"]) == (2, 22.0, 0.19)  # 0.19 >= 0.95 * 0.20
    assert time_to_share(history, 0.96)["epoch"] == 5
    assert time_to_share([{"epoch": 1, "seconds": 3.0}]) == {}


def test_ml1m_user_codes_become_names_and_join_to_the_sasrec_ids(tmp_path):
    from benchmarks.datasets import ml1m_users

    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::99::55117\n9::F::18::4::02460\n")
    (tmp_path / "map.txt").write_text("5 1\n6 2\n7 3\n")  # SASRec id, original id; user 9 is not in the file
    got = ml1m_users(str(tmp_path / "users.dat"), str(tmp_path / "map.txt")).to_dict("records")
    assert got == [
        {"user_id": "5", "gender": "F", "age_band": "under 18", "occupation": "K-12 student", "region": "4"},
        {"user_id": "6", "gender": "M", "age_band": "56+", "occupation": "self-employed", "region": "7"},
        {"user_id": "7", "gender": "M", "age_band": "25-34", "occupation": "99", "region": "5"},  # unknown code kept
    ]


def test_the_order_free_copy_keeps_every_users_items_and_shuffles_their_order(tmp_path):
    from benchmarks.order_free import shuffle_ratings_csv, shuffle_sasrec

    src = tmp_path / "ratings.csv"
    rows = [(u, 100 * u + i, 4.0, 1_000_000 + 10 * i) for u in (1, 2) for i in range(30)]
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(src, index=False)
    assert shuffle_ratings_csv(str(src), str(tmp_path / "copy.csv"), seed=0) == 60
    copy = pd.read_csv(tmp_path / "copy.csv")
    for user, got in copy.groupby("userId"):
        assert sorted(got.movieId) == [100 * user + i for i in range(30)]  # the same items and timestamps
        assert sorted(got.timestamp) == [1_000_000 + 10 * i for i in range(30)]
        assert list(got.sort_values("timestamp").movieId) != sorted(got.movieId)  # in another order

    (tmp_path / "seq.txt").write_text("1 " + " ".join(map(str, range(1, 31))) + "\n2 5\n2 6\n2 7\n")
    assert shuffle_sasrec(str(tmp_path / "seq.txt"), str(tmp_path / "seq-copy.txt"), seed=0) == 33
    lines = {ln.split()[0]: ln.split()[1:] for ln in (tmp_path / "seq-copy.txt").read_text().splitlines()}
    assert sorted(map(int, lines["1"])) == list(range(1, 31)) and lines["1"] != [str(i) for i in range(1, 31)]
    assert sorted(lines["2"]) == ["5", "6", "7"]

    # The command copies the side files unchanged, renamed after the copy where the name says whose.
    from benchmarks.order_free import main

    (tmp_path / "movies.csv").write_text("movieId,title,genres\n100,A (1999),Drama\n")
    (tmp_path / "seq_item2attributes.json").write_text('{"1": [3]}')
    assert main([str(src), str(tmp_path / "free" / "ratings.csv")]) == 0
    assert (tmp_path / "free" / "movies.csv").read_text() == (tmp_path / "movies.csv").read_text()
    assert main([str(tmp_path / "seq.txt"), str(tmp_path / "free" / "other.txt")]) == 0
    assert (tmp_path / "free" / "other_item2attributes.json").read_text() == '{"1": [3]}'


def test_side_files_are_the_ones_that_belong_to_the_dataset_file(tmp_path):
    from benchmarks.datasets import side_files

    # An S3-Rec folder with two datasets whose item ids overlap: each reads its own attributes.
    (tmp_path / "Beauty.txt").write_text("1 1 2\n")
    (tmp_path / "Sports.txt").write_text("1 1 2\n")
    (tmp_path / "Toys.txt").write_text("1 1 2\n")
    (tmp_path / "Beauty_item2attributes.json").write_text('{"1": [10, 11], "2": [12]}')
    (tmp_path / "Sports_item2attributes.json").write_text('{"1": [90], "2": [91, 92]}')
    sports = side_files(str(tmp_path / "Sports.txt"), str(tmp_path / "out-sports"))
    assert pd.read_csv(os.path.join(sports["items"], "items.csv"), dtype=str)["tags"].tolist() == ["90", "91|92"]
    assert side_files(str(tmp_path / "Toys.txt"), str(tmp_path / "out-toys")) == {}  # none of its own

    # GroupLens form: movies.csv beside ratings.csv, with the ratings' own ids.
    ml = tmp_path / "ml-latest"
    ml.mkdir()
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,7,4.0,100\n")
    (ml / "movies.csv").write_text('movieId,title,genres\n7,"Heat, The (1995)",Action|Crime\n'
                                   "9,Unknown (2001),(no genres listed)\n")
    items = pd.read_csv(os.path.join(side_files(str(ml / "ratings.csv"), str(tmp_path / "out-ml"))["items"],
                                     "items.csv"), dtype=str)
    assert items["item_id"].tolist() == ["7", "9"] and items["title"].tolist() == ["Heat, The (1995)", "Unknown (2001)"]
    assert items["category"].tolist()[0] == "Action" and items["tags"].tolist()[0] == "Action|Crime"
    assert items[["category", "tags"]].iloc[1].isna().all()  # no genres: no category, no tags

    # A SASRec file with users.dat but only the items' id mapping: users are left out, not joined by
    # their original ids (which are not the file's); beside ratings.dat they keep their own ids.
    sas = tmp_path / "sas"
    sas.mkdir()
    (sas / "seq.txt").write_text("1 1\n")
    (sas / "users.dat").write_text("9::F::1::10::48067\n")
    (sas / "movies.dat").write_text("7::Heat (1995)::Action|Crime\n")
    (sas / "sas_to_original_items.txt").write_text("1 7\n")
    assert sorted(side_files(str(sas / "seq.txt"), str(tmp_path / "out-sas"))) == ["items"]
    (sas / "ratings.dat").write_text("9::7::5::100\n")
    got = side_files(str(sas / "ratings.dat"), str(tmp_path / "out-dat"))
    assert pd.read_csv(os.path.join(got["users"], "users.csv"), dtype=str)["user_id"].tolist() == ["9"]
    assert pd.read_csv(os.path.join(got["items"], "items.csv"), dtype=str)["item_id"].tolist() == ["7"]
