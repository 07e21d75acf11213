"""Pure-torch tests: no JVM needed."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from recsys_spark.metrics import ndcg_at_k, recall_at_k
from recsys_spark.model import AttentionRecommender, ModelConfig, pad_left


def test_model_package_imports_without_pyspark():
    code = ("import sys; sys.modules['pyspark'] = None\n"
            "import recsys_spark.model, recsys_spark.topk, recsys_spark.train\n"
            "assert 'pyspark.sql' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=30, max_len=8, d_model=16, n_heads=2, n_layers=2, dropout=0.0,
                      n_categories=4, attr_cardinalities=[3, 3, 3], n_profile_num=5, **kw)
    return AttentionRecommender(cfg, torch.arange(30) % 4)


def test_attention_is_causal_and_ignores_padding():
    m = _model().eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    h1 = m.encode(seq)
    seq2 = seq.clone()
    seq2[0, -1] = 20  # change the newest item only
    h2 = m.encode(seq2)
    assert torch.allclose(h1[:, :-1], h2[:, :-1], atol=1e-6)
    assert not torch.allclose(h1[:, -1], h2[:, -1])
    assert torch.isfinite(h1).all()
    # Padding is invisible: whatever the padding row's vector holds, real positions do not change.
    with torch.no_grad():
        m.item_emb.weight[0] = 5.0
    h3 = m.encode(seq)
    assert torch.allclose(h1[:, 2:], h3[:, 2:], atol=1e-6)


def test_forward_returns_scores_and_loss_and_learns_a_transition():
    torch.manual_seed(0)
    m = _model(use_profile=False)
    # Deterministic rule: next item = item + 1 (mod 29, skipping padding 0).
    starts = torch.randint(1, 29, (64,))
    seq = ((starts[:, None] + torch.arange(9)) % 29) + 1
    inp, tgt = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    first = None
    for _ in range(150):
        _, loss = m(inp, tgt)
        first = first if first is not None else float(loss)
        opt.zero_grad(); loss.backward(); opt.step()
    assert float(loss) < first / 4
    m.eval()
    scores, none = m(inp)
    assert none is None and scores.shape == (64, 30)
    assert (scores.argmax(1) == tgt[:, -1]).float().mean() > 0.9


def test_profile_changes_the_user_vector():
    m = _model().eval()
    seq = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    a = m.user_vectors(seq, torch.tensor([[1, 1, 1]]), torch.zeros(1, 5))
    b = m.user_vectors(seq, torch.tensor([[2, 2, 2]]), torch.ones(1, 5))
    assert not torch.allclose(a, b)


def test_dropping_all_padding_columns_leaves_user_vectors_unchanged():
    # Scoring trims the columns that are padding for every user in a batch.
    m = _model().eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [0, 0, 0, 0, 0, 0, 9, 2]])
    pc, pn = torch.tensor([[1, 2, 1], [2, 1, 1]]), torch.rand(2, 5)
    full = m.user_vectors(seq, pc, pn)
    assert torch.allclose(m.user_vectors(seq[:, 5:], pc, pn), full, atol=1e-6)


def test_pad_left_keeps_newest_items():
    out = pad_left([[1, 2, 3, 4, 5], [7], []], 3)
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]


def test_metrics_on_a_hand_computed_example():
    ranked = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 4]])
    targets = np.array([3, 4, 4])
    # user0 hit at rank 2, user1 miss, user2 hit at rank 3
    assert recall_at_k(ranked, targets, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, targets, 2) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 3)
    assert ndcg_at_k(ranked, targets, 1) == 0.0
