import pytest
import torch

from harness.construction.scoring import (anchor_threshold, naive_scores, score_positions, score_tokens,
                             select_anchors)
from harness.training.model_io import load_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


def _batch(vocab, B=3, T=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (B, T), generator=g)


@pytest.mark.parametrize("block", [1, 16, 50, 1024])
def test_block_scorer_matches_full_logits(model, block):
    ids = _batch(model.config.vocab_size)
    ent, nll = score_tokens(model, ids, block=block)
    ref_e, ref_n = naive_scores(model, ids)
    assert torch.isnan(ent[:, 0]).all() and torch.isnan(nll[:, 0]).all()
    torch.testing.assert_close(ent[:, 1:], ref_e[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(nll[:, 1:], ref_n[:, 1:], atol=1e-5, rtol=0)


def test_anchor_only_mode_matches_full(model):
    ids = _batch(model.config.vocab_size, B=2, T=64, seed=1)
    ref_e, ref_n = naive_scores(model, ids)
    pos = [torch.tensor([1, 5, 63]), torch.tensor([10])]
    out = score_positions(model, ids, pos)
    for b, (e, n) in enumerate(out):
        torch.testing.assert_close(e, ref_e[b, pos[b]], atol=1e-5, rtol=0)
        torch.testing.assert_close(n, ref_n[b, pos[b]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="position 0"):
        score_positions(model, ids, [torch.tensor([0]), torch.tensor([1])])


def test_padding_does_not_change_scores(model):
    ids = _batch(model.config.vocab_size, B=1, T=40, seed=2)
    padded = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 40), torch.zeros(1, 10)], 1).long()
    e1, n1 = score_tokens(model, ids)
    e2, n2 = score_tokens(model, padded, attention_mask=mask)
    torch.testing.assert_close(e1[:, 1:], e2[:, 1:40], atol=1e-5, rtol=0)


def test_threshold_is_mean_plus_alpha_std():
    h = torch.tensor([float("nan"), 1.0, 1.0, 1.0, 1.0, 9.0])
    vals = torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0])
    assert anchor_threshold(h, 2.0) == pytest.approx(float(vals.mean() + 2 * vals.std(unbiased=False)))
    assert select_anchors(h, 1.0).tolist() == [5]
    assert select_anchors(h, 2.0).tolist() == []
