"""Pure-torch tests: no JVM needed."""
import numpy as np
import pytest
import torch

from recsys_spark.metrics import ndcg_at_k, recall_at_k
from recsys_spark.model import (AttentionRecommender, GatedLayer, ModelConfig, leading_padding, pad_left,
                                sample_positions, targets_ahead)


def _model(**kw):
    kw = {"use_behaviour": True, "item_id_dropout": 0.0, "n_layers": 2, **kw}
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=30, max_len=8, d_model=16, n_heads=2, dropout=0.0,
                      n_categories=4, attr_cardinalities=[3, 3, 3], n_profile_num=5, **kw)
    return AttentionRecommender(cfg, torch.arange(30) % 4)


BLOCKS = ["transformer", "gated"]


@pytest.mark.parametrize("block", BLOCKS)
def test_attention_is_causal_and_ignores_padding(block):
    m = _model(block=block).eval()
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
        m.items.id_emb.weight[0] = 5.0
    h3 = m.encode(seq)
    assert torch.allclose(h1[:, 2:], h3[:, 2:], atol=1e-6)


@pytest.mark.parametrize("block", BLOCKS)
def test_forward_returns_scores_and_loss_and_learns_a_transition(block):
    torch.manual_seed(0)
    m = _model(use_profile=False, block=block)
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


def test_adversarial_training_moves_each_item_vector_its_share_against_the_model_and_still_learns():
    from recsys_spark.model import adversarial_items

    torch.manual_seed(0)
    m = _model(use_profile=False)
    starts = torch.randint(1, 29, (64,))
    seq = ((starts[:, None] + torch.arange(9)) % 29) + 1
    inp, tgt = seq[:, :-1], seq[:, 1:]
    items = m.item_vectors()
    _, loss = m.next_item_loss(items, inp, tgt, None, None)
    moved = adversarial_items(items, loss, 0.2)
    shift = (moved - items).norm(dim=1)
    assert torch.allclose(shift[1:], 0.2 * items[1:].norm(dim=1), rtol=1e-4) and float(shift[0]) == 0.0
    assert float(m.next_item_loss(moved, inp, tgt, None, None)[1]) > float(loss) + 0.01
    # The option's loss adds the moved one in training only, and the rule is still learned.
    adv = _model(use_profile=False, adversarial_eps=0.2)
    adv.eval()
    assert float(adv(inp, tgt)[1]) == pytest.approx(float(_model(use_profile=False).eval()(inp, tgt)[1]))
    adv.train()
    opt = torch.optim.Adam(adv.parameters(), lr=0.01)
    for _ in range(150):
        _, loss = adv(inp, tgt)
        opt.zero_grad(); loss.backward(); opt.step()
    adv.eval()
    assert (adv(inp)[0].argmax(1) == tgt[:, -1]).float().mean() > 0.9


def test_sampled_cross_entropy_scores_the_target_against_the_drawn_items():
    m = _model(use_profile=False, loss_negatives=8).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 9, 10, 11]])
    tgt = torch.tensor([[0, 0, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 10, 11, 12]])
    torch.manual_seed(7)
    logits, loss = m(seq, tgt)
    # By hand: the same 8 uniform draws from items 1..29, the target's score first, a drawn item
    # equal to the target removed (not a negative), cross-entropy with class 0.
    torch.manual_seed(7)
    neg = torch.randint(1, 30, (8,))
    with torch.no_grad():
        h = m.encode(seq)[tgt > 0]
        items = m.item_vectors()
        t = tgt[tgt > 0]
        s = torch.cat([(h * items[t]).sum(1, keepdim=True), h @ items[neg].T], 1)
        s[:, 1:][neg.unsqueeze(0) == t.unsqueeze(1)] = float("-inf")
        expected = torch.nn.functional.cross_entropy(s, torch.zeros_like(t))
    assert logits.shape == (len(t), 9)
    assert 4 in neg.tolist() and t[0] == 4 and torch.isinf(logits[0, 1:]).sum() == 1  # the draw of item 4
    assert torch.allclose(loss, expected, atol=1e-6)
    # As many negatives as the catalog has items: the full softmax.
    full = _model(use_profile=False, loss_negatives=29).eval()
    scores, _ = full(seq, tgt)
    assert scores.shape == (len(t), 30)


def test_label_smoothing_spreads_its_share_over_the_candidates_and_only_in_training():
    from recsys_spark.model import smoothed_cross_entropy

    logits = torch.tensor([[float("-inf"), 2.0, 0.0, -1.0], [float("-inf"), 0.5, 0.5, 3.0]])
    target = torch.tensor([1, 3])
    assert torch.allclose(smoothed_cross_entropy(logits, target, 0.0), torch.nn.functional.cross_entropy(logits, target))
    # By hand: 0.9 of the target's -log p, 0.1 of the mean -log p over the 3 finite candidates.
    logp = torch.log_softmax(logits, 1)
    want = (0.9 * -logp[[0, 1], target] + 0.1 * -logp[:, 1:].mean(1)).mean()
    got = smoothed_cross_entropy(logits, target, 0.1)
    assert torch.isfinite(got) and torch.allclose(got, want)
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    tgt = torch.tensor([[0, 0, 4, 5, 6, 7, 8, 9]])
    for negatives, classes in ((0, tgt[tgt > 0]), (8, torch.zeros(6, dtype=torch.long))):  # full, sampled softmax
        model = _model(use_profile=False, loss_negatives=negatives, label_smoothing=0.2)
        torch.manual_seed(3)
        scores, loss = model.train()(seq, tgt)
        logp = torch.log_softmax(scores.detach(), 1)
        finite = torch.isfinite(scores.detach())
        by_hand = (0.8 * -logp.gather(1, classes[:, None]).squeeze(1)
                   + 0.2 * -torch.where(finite, logp, 0.0).sum(1) / finite.sum(1)).mean()
        assert torch.isfinite(loss) and torch.allclose(loss, by_hand)
        torch.manual_seed(3)
        scores, measured = model.eval()(seq, tgt)
        assert torch.allclose(measured, torch.nn.functional.cross_entropy(scores, classes))  # measured without it


def test_targets_ahead_are_drawn_from_the_next_items_of_the_window_only():
    tgt = torch.tensor([[0, 0, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 10, 11, 12]])
    assert torch.equal(targets_ahead(tgt, 1), tgt)  # span 1: the next item, unchanged
    torch.manual_seed(0)
    drawn = torch.stack([targets_ahead(tgt, 3) for _ in range(400)])
    assert (drawn[:, tgt == 0] == 0).all()  # positions without a target get none
    for row in range(2):
        for col in range(8):
            if tgt[row, col] > 0:
                ahead = set(tgt[row, col:col + 3].tolist())
                assert set(drawn[:, row, col].tolist()) == ahead  # each of the next 3, and nothing else
    # Training with a span takes its loss on such a draw; evaluation scores the targets as given.
    m = _model(use_profile=False, target_span=3)
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    torch.manual_seed(1)
    _, train_loss = m.train()(seq, tgt[:1])
    # The same uniform draws made into targets by hand, over the 6 columns left once the batch's
    # padding is dropped (leading_padding): position t takes the target 0 to min(3, 6 - t) - 1 places ahead.
    torch.manual_seed(1)
    kept = tgt[:1, 2:]
    steps = (torch.rand(1, 6) * torch.tensor([3, 3, 3, 3, 2, 1])).long()
    drawn_tgt = torch.where(kept > 0, kept.gather(1, torch.arange(6) + steps), kept)
    with torch.no_grad():
        _, drawn_loss = m.eval()(seq[:, 2:], drawn_tgt)
        _, next_loss = m(seq, tgt[:1])
    assert not torch.equal(drawn_tgt, kept)
    assert torch.isclose(train_loss, drawn_loss) and not torch.isclose(train_loss, next_loss)


def test_the_loss_is_taken_at_a_uniform_sample_of_the_batchs_positions():
    # Row 0 has 6 targets, row 1 has 2: a budget of 2 a window keeps 4 of the 8, drawn from the
    # whole batch, so every position counts equally often (the long window is not cut to 2).
    tgt = torch.tensor([[0, 0, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 0, 11, 12]])
    assert torch.equal(sample_positions(tgt, 0), tgt) and torch.equal(sample_positions(tgt, 4), tgt)
    torch.manual_seed(0)
    draws = torch.stack([sample_positions(tgt, 2) for _ in range(2000)])
    assert ((draws == tgt) | (draws == 0)).all()  # a kept position keeps its own target
    assert ((draws > 0).sum(dim=(1, 2)) == 4).all()
    share = (draws > 0).float().mean(0)[tgt > 0]
    assert torch.allclose(share, torch.full_like(share, 0.5), atol=0.05), share
    # Training takes its loss on such a sample; evaluation scores every position.
    m = _model(use_profile=False, loss_positions=2)
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 3, 10, 11]])
    torch.manual_seed(1)
    _, train_loss = m.train()(seq, tgt)
    # The same draw made into targets by hand: 4 of the 8 target positions (row-major order), in the
    # order of one random permutation.
    torch.manual_seed(1)
    positions = tgt.flatten().nonzero().squeeze(1)[torch.randperm(8)[:4]]
    sampled = torch.zeros(tgt.numel(), dtype=tgt.dtype)
    sampled[positions] = tgt.flatten()[positions]
    sampled = sampled.view_as(tgt)
    with torch.no_grad():
        _, sampled_loss = m.eval()(seq, sampled)
        _, every_loss = m(seq, tgt)
    assert torch.isclose(train_loss, sampled_loss) and not torch.isclose(train_loss, every_loss)


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


@pytest.mark.parametrize("block", BLOCKS)
def test_the_training_loss_does_not_depend_on_how_much_padding_a_batch_carries(block):
    # A batch of short windows is cut to its longest one before the encoder, so its cost is its
    # own length; its loss must be the one the encoder computes over the full width.
    m = _model(block=block).eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [0, 0, 0, 0, 0, 0, 9, 2]])
    tgt = torch.tensor([[0, 0, 0, 0, 0, 4, 5, 6], [0, 0, 0, 0, 0, 0, 2, 7]])
    pc, pn = torch.tensor([[1, 2, 1], [2, 1, 1]]), torch.rand(2, 5)
    assert leading_padding(seq, tgt) == 5 and leading_padding(seq.numpy()) == 5
    assert leading_padding(seq, torch.roll(tgt, -2, 1)) == 3  # a target alone keeps its column
    assert leading_padding(torch.zeros(2, 8)) == 7  # an empty batch keeps one column
    with torch.no_grad():
        _, full_width = m.next_item_loss(m.items(), seq, tgt, pc, pn)
        widths = []
        m.encode = lambda s, *a, _encode=m.encode, **k: widths.append(s.shape[1]) or _encode(s, *a, **k)
        _, trimmed = m(seq, tgt, pc, pn)
    assert widths == [3]
    assert torch.isclose(trimmed, full_width, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"use_profile": False}, {"use_behaviour": False, "n_layers": 1},
                                {"n_layers": 3}, {"block": "gated"}, {"block": "gated", "n_layers": 1}])
def test_user_vectors_equal_the_full_encoders_state_at_the_newest_item(kw):
    # user_vectors computes the last layer at the two ends only; every state it returns must be the
    # one the whole encoder computes there (the profile token's for an empty history).
    m = _model(**kw).eval()
    seq = torch.tensor([[0, 0, 0, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 9, 2], [0] * 8, [1, 2, 3, 4, 5, 6, 7, 8]])
    pc, pn = torch.tensor([[1, 2, 1], [2, 1, 1], [1, 1, 2], [0, 0, 0]]), torch.rand(4, 5)
    with torch.no_grad():
        h = m.encode(seq, pc, pn)
    expected = h[:, -1].clone()
    if m.profile is not None:
        expected[2] = h[2, 0]
    assert torch.allclose(m.user_vectors(seq, pc, pn), expected, atol=1e-5)


def test_a_gated_layer_adds_only_what_its_gates_let_through_and_a_saved_model_keeps_its_layers():
    torch.manual_seed(0)
    layer = GatedLayer(8, 2, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    mask = mask.expand(2 * 2, 5, 5)
    with torch.no_grad():
        opened = layer(x, mask)
        assert not torch.allclose(opened, x, atol=1e-3)
        assert torch.allclose(layer(x, mask, rows=[1, 4]), opened[:, [1, 4]], atol=1e-6)
        for gate in (layer.attn_gate, layer.ff_residual_gate):  # shut: the stream passes unchanged
            gate.weight.zero_()
            gate.bias.fill_(-1e4)
        assert torch.allclose(layer(x, mask), x)
    saved = _model(block="gated")
    assert sum(isinstance(part, GatedLayer) for part in saved.modules()) == 2
    assert not any(isinstance(part, torch.nn.TransformerEncoderLayer) for part in saved.modules())
    loaded = AttentionRecommender(ModelConfig(**saved.cfg.to_dict()), torch.arange(30) % 4)
    loaded.load_state_dict(saved.state_dict())
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(loaded.eval().encode(seq), saved.eval().encode(seq))


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


def _content_model(vectors: bool = True, **kw):
    """Items 1..12 in 4 categories (item % 4), each with one tag and a two-term title, and (vectors)
    an upstream vector of 3 numbers, except items 0-1."""
    kw = {"use_behaviour": True, "item_id_dropout": 0.0, **kw}
    torch.manual_seed(0)
    n = 13
    feats = {
        "category": torch.tensor([0] + [1 + i % 4 for i in range(1, n)]),
        "brand": torch.zeros(n, dtype=torch.long),
        "tags": torch.tensor([[0]] + [[1 + i % 4] for i in range(1, n)]),
        "text_idx": torch.tensor([[0, 0]] + [[i % 4, 4 + i % 3] for i in range(1, n)]),
        "text_tf": torch.tensor([[0.0, 0.0]] + [[1.0, 1.0]] * (n - 1)),
        "num": torch.rand(n, 2) * 10,
        "vec": torch.cat([torch.full((2, 3), float("nan")), torch.randn(n - 2, 3)]),  # items 0-1: no vector
        "has_id": torch.ones(n, dtype=torch.bool),
    }
    stats = {"idf": torch.rand(8) + 0.5, "item_num_mean": torch.tensor([5.0, 5.0]), "item_num_std": torch.tensor([2.0, 3.0]),
             "item_vec_mean": torch.tensor([0.1, 0.0, -0.1]), "item_vec_std": torch.tensor([1.0, 2.0, 0.5]),
             "profile_num_mean": torch.tensor([1.0, 2.0, 3.0]), "profile_num_std": torch.tensor([0.5, 1.0, 2.0])}
    if not vectors:
        del feats["vec"], stats["item_vec_mean"], stats["item_vec_std"]
    cfg = ModelConfig(n_items=n, max_len=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0, n_categories=5,
                      n_brands=1, n_tags=5, text_dim=8, n_item_num=2, n_item_vec=3 if vectors else 0,
                      attr_cardinalities=[4, 3], n_profile_num=3, **kw)
    return AttentionRecommender(cfg, feats, stats), feats, stats


def test_new_and_untrained_items_are_represented_by_content():
    m, feats, _ = _content_model()
    m.eval()
    content = m.content_vectors(feats)
    base = m.item_vectors()
    assert torch.allclose(base[1:], m.items.id_emb.weight[1:] + content[1:])
    # An item without a trained id embedding (held out, or never touched) is its content plus the
    # learned "unknown id" vector, whatever its own (untrained) id row holds.
    with torch.no_grad():
        m.items.feat_has_id[3] = False
        m.items.unk_id.fill_(0.5)
        m.items.id_emb.weight[3] = 100.0
    assert torch.allclose(m.item_vectors()[3], content[3] + 0.5)
    # A catalog that grew after training: the new rows get content vectors, old rows are unchanged,
    # and an unseen category value is read as "unknown" (0) instead of failing.
    grown = {k: torch.cat([v, v[1:3]]) for k, v in feats.items()}
    grown["category"][-1] = 99
    vec = m.item_vectors(grown)
    assert vec.shape[0] == 15
    assert torch.allclose(vec[:13], m.item_vectors())
    assert torch.allclose(vec[13], m.content_vectors(grown)[13] + 0.5) and torch.isfinite(vec).all()


def _styled_catalog(use_vectors: bool):
    """Items 1-12 (trained) and 13-14 (never seen in training), all of one category with no other
    content; the upstream vectors say each item's style (odd items A, even items B; 13 is A, 14 B)."""
    n = 15
    style = torch.tensor([0] + [i % 2 for i in range(1, 13)] + [1, 0])
    vec = torch.nn.functional.one_hot(style, 2).float() + 0.05 * torch.randn(n, 2)
    feats = {"category": torch.ones(n, dtype=torch.long), "vec": vec,
             "has_id": torch.tensor([True] * 13 + [False, False])}
    cfg = ModelConfig(n_items=n, max_len=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0, n_categories=2,
                      n_item_vec=2, use_vectors=use_vectors, use_profile=False, item_id_dropout=0.5)
    return AttentionRecommender(cfg, feats, {"item_vec_mean": vec.mean(0), "item_vec_std": vec.std(0)}), style


def test_upstream_item_vectors_carry_what_the_encoder_knows_to_items_nobody_has_touched():
    # Users stay within a style. After training, an item the model never saw is ranked after a
    # style-A history above an unseen style-B item by its vector alone; without the vectors the two
    # are the same item to the model.
    scores = {}
    for use_vectors in (True, False):
        torch.manual_seed(0)
        m, style = _styled_catalog(use_vectors)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(300):
            s = torch.randint(0, 2, (32, 1))
            seq = 1 + 2 * torch.randint(0, 6, (32, 7)) + (1 - s)  # s = 1: odd ids, style A
            _, loss = m(seq[:, :-1], seq[:, 1:])
            opt.zero_grad(); loss.backward(); opt.step()
        m.eval()
        history = torch.tensor([[1, 3, 5, 7, 9, 11]])  # style A
        scores[use_vectors] = m(history)[0][0]
    assert scores[True][13] > scores[True][14] + 0.5
    assert torch.isclose(scores[False][13], scores[False][14])


def test_an_item_without_an_upstream_vector_reads_as_the_average_one_and_a_new_width_is_refused():
    m, feats, stats = _content_model()
    m.eval()
    as_mean = dict(feats, vec=feats["vec"].clone())
    as_mean["vec"][0:2] = stats["item_vec_mean"]
    assert torch.allclose(m.content_vectors(feats)[:2], m.content_vectors(as_mean)[:2])
    with pytest.raises(ValueError, match="retrain"):
        m.content_vectors(dict(feats, vec=torch.randn(13, 4)))


def test_a_model_saved_before_item_vectors_existed_loads():
    old = _model()
    with torch.no_grad():
        old.items.id_emb.weight.add_(1.0)
    state = {k: v for k, v in old.state_dict().items() if "vec" not in k}
    assert len(state) < len(old.state_dict())
    fresh = _model()
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.item_vectors(), old.item_vectors())


def test_profile_token_serves_users_without_history_and_learns_their_first_item():
    # Rule: a user's first item is decided by the declared attributes (first attr a, second b ->
    # item 1 + 3a + b); the profile token's output is trained on it, so a user with no history
    # gets that item on top from the profile alone.
    m, _, _ = _content_model(use_behaviour=False, use_content=False, use_text=False)
    torch.manual_seed(1)
    a, b = torch.randint(0, 4, (256,)), torch.randint(0, 3, (256,))
    first = 1 + (3 * a + b) % 12
    seq = torch.stack([first, first % 12 + 1, (first + 1) % 12 + 1], 1)
    inp, tgt = torch.cat([torch.zeros(256, 3, dtype=torch.long), seq[:, :2]], 1), torch.cat(
        [torch.zeros(256, 3, dtype=torch.long), seq[:, 1:]], 1)
    pc = torch.stack([a, b], 1)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    m.train()
    for _ in range(200):
        _, loss = m(inp, tgt, pc)
        opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    empty = torch.zeros(256, 1, dtype=torch.long)
    users = m.user_vectors(empty, pc)
    assert torch.isfinite(users).all()
    top = (users @ m.item_vectors().T)[:, 1:].argmax(1) + 1
    assert (top == first).float().mean() > 0.9
