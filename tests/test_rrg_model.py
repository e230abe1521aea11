"""Unit tests of the compact report generator (camegrad_mini.rrg.model): sizes, shapes, causality,
which tasks reach which parameters, decoding, and that it can actually learn (overfit two studies)."""
from __future__ import annotations

import pytest
import torch

from camegrad_mini.rrg.model import ModelConfig, ReportGenerator

torch.set_num_threads(1)
V = 40  # vocabulary for the toy tests
BOS, EOS, PAD = 1, 2, 0


def tiny(**kw) -> ReportGenerator:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", V, image_size=32, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=12, **kw)
    return ReportGenerator(cfg)


def batch(B: int = 3, T: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, 2, 32, 32), generator=g, dtype=torch.uint8)
    tokens = torch.randint(3, V, (B, T), generator=g)
    tokens[:, 0] = BOS
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, -1] = EOS
    labels = (torch.rand(B, 14, generator=g) < 0.3).float()
    return images, tokens, targets, labels


def test_full_preset_is_compact_5_to_10M():
    n = ReportGenerator(ModelConfig.preset("full", 760)).num_parameters()
    assert 5_000_000 <= n <= 10_000_000, n


def test_presets_are_ordered_by_size():
    sizes = [ReportGenerator(ModelConfig.preset(p, 200, image_size=64)).num_parameters() for p in ("tiny", "small", "full")]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("kw, word", [(dict(d_model=50, n_heads=4), "n_heads"), (dict(image_size=30), "image_size"),
                                      (dict(bos_id=V), "bos_id"), (dict(dropout=1.0), "dropout"),
                                      (dict(widths=(8, 16), blocks=(1,)), "widths")])
def test_bad_config_raises_naming_the_field(kw, word):
    with pytest.raises(ValueError, match=word):
        ModelConfig.preset("tiny", V, **kw)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.preset("huge", V)


def test_config_roundtrip():
    cfg = ModelConfig.preset("tiny", V, image_size=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_forward_shapes_and_finite_losses():
    m = tiny()
    images, tokens, targets, labels = batch()
    out = m(images, tokens)
    assert out.logits.shape == (3, 8, V)
    assert out.cls_logits.shape == (3, 14)
    assert out.memory.shape == (3, 2 * m.grid * m.grid, 48)
    losses = m.losses(images, tokens, targets, labels)
    assert set(losses) == {"report", "cls"}
    assert all(torch.isfinite(v) for v in losses.values())
    # at initialisation the token NLL is close to log(V) (small logits)
    assert abs(float(losses["report"].detach()) - torch.log(torch.tensor(float(V)))) < 0.5


def test_bad_image_shape_raises():
    m = tiny()
    with pytest.raises(ValueError, match="images"):
        m.encode(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="32x32"):
        m.encode(torch.zeros(2, 2, 64, 64, dtype=torch.uint8))


def test_decoder_is_causal():
    m = tiny().eval()
    images, tokens, _, _ = batch()
    a = m(images, tokens).logits
    changed = tokens.clone()
    changed[:, 5:] = 3
    b = m(images, changed).logits
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)


def test_padding_targets_are_ignored():
    m = tiny().eval()
    images, tokens, targets, labels = batch()
    t1, t2 = targets.clone(), targets.clone()
    t1[:, 6:] = -100
    t2[:, 6:] = -100
    t2[:, :6] = t1[:, :6]
    tokens2 = tokens.clone()
    tokens2[:, 6:] = PAD  # inputs after the last target do not matter either (causal)
    l1 = m.losses(images, tokens, t1, labels)["report"]
    l2 = m.losses(images, tokens2, t2, labels)["report"]
    assert torch.allclose(l1, l2, atol=1e-6)


def _grad_names(m, loss):
    m.zero_grad()
    loss.backward()
    return {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_only_the_encoder_is_shared_between_report_and_classification():
    m = tiny()
    images, tokens, targets, labels = batch()
    rep = _grad_names(m, m.losses(images, tokens, targets, labels)["report"])
    cls = _grad_names(m, m.losses(images, tokens, targets, labels)["cls"])
    groups = m.parameter_groups()
    shared = rep & cls
    assert shared and shared <= set(groups["encoder (shared)"])
    assert not (cls & set(groups["decoder (report)"]))
    assert not (rep & set(groups["cls_head (classification)"]))


def test_views_share_cnn_weights():
    """Swapping the two views changes only the view embedding's contribution: with the view
    embedding zeroed, the encoder output is the same set of tokens in swapped order."""
    m = tiny().eval()
    with torch.no_grad():
        m.view_emb.zero_()
    images, *_ = batch(B=1)
    a = m.encode(images)
    b = m.encode(images.flip(1))
    n = a.shape[1] // 2
    # the encoder layer mixes tokens with attention, which is permutation-equivariant
    assert torch.allclose(a[:, :n], b[:, n:], atol=1e-5) and torch.allclose(a[:, n:], b[:, :n], atol=1e-5)


def test_alignment_head_adds_an_infonce_loss():
    m = tiny(align_dim=16)
    images, tokens, targets, labels = batch(B=4)
    losses = m.losses(images, tokens, targets, labels)
    assert "align" in losses and torch.isfinite(losses["align"])
    assert 0.5 < float(losses["align"].detach()) < 3.0  # about log(4) = 1.39 at initialisation


def test_generate_greedy_matches_beam_of_one_and_respects_limits():
    m = tiny().eval()
    images, *_ = batch()
    greedy = m.generate(images, max_len=6)
    assert len(greedy) == 3 and all(len(s) <= 6 and EOS not in s for s in greedy)
    assert [m._beam(m.encode(images[i:i + 1]), 6, 1) for i in range(3)] == greedy
    beams = m.generate(images, max_len=6, beam_size=3)
    assert all(len(s) <= 6 and EOS not in s for s in beams)
    with pytest.raises(ValueError, match="beam_size"):
        m.generate(images, beam_size=0)
    with pytest.raises(ValueError, match="max_len"):
        m.generate(images, max_len=99)


def test_overfits_two_studies_and_decodes_their_reports():
    """The model can learn: two studies with different images and reports are memorised and
    greedy decoding reproduces each report exactly."""
    m = tiny()

    images = torch.stack([torch.zeros(2, 32, 32), torch.full((2, 32, 32), 255.0)]).to(torch.uint8)
    images[1, :, :16] = 0
    reports = [[5, 6, 7, 8], [9, 10, 11]]
    L = 6
    tokens = torch.full((2, L), PAD)
    targets = torch.full((2, L), -100)
    for i, r in enumerate(reports):
        seq = [BOS] + r + [EOS]
        tokens[i, :len(seq) - 1] = torch.tensor(seq[:-1])
        targets[i, :len(seq) - 1] = torch.tensor(seq[1:])
    labels = torch.zeros(2, 14)
    labels[1, 3] = 1
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    for _ in range(80):
        loss = sum(m.losses(images, tokens, targets, labels).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert m.generate(images, max_len=8) == reports
    probs = torch.sigmoid(m.classify(m.encode(images)))
    assert probs[1, 3] > 0.5 > probs[0, 3]

