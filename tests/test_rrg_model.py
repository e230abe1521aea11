"""Unit tests of the compact report generator (camegrad_mini.rrg.model): sizes, shapes, causality,
which tasks reach which parameters, decoding, and that it can actually learn (overfit two studies)."""
from __future__ import annotations

import os
import time

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
    sizes = [ReportGenerator(ModelConfig.preset(p, 200, image_size=64)).num_parameters()
             for p in ("tiny", "small", "full")]
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
    assert m._beam(m.encode(images), 6, 1) == greedy
    beams = m.generate(images, max_len=6, beam_size=3)
    assert all(len(s) <= 6 and EOS not in s for s in beams)
    with pytest.raises(ValueError, match="beam_size"):
        m.generate(images, beam_size=0)
    with pytest.raises(ValueError, match="max_len"):
        m.generate(images, max_len=99)
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        m.generate(images, no_repeat_ngram=-1)


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



# --------------------------------------------------------------------------------------------
# Decoding: key/value cache, batched beam search, no-repeat n-grams, length penalty.
# --------------------------------------------------------------------------------------------

def decoder(seed: int, boost: dict[int, float] | None = None, ids: dict[str, int] | None = None,
            **kw) -> ReportGenerator:
    """A random tiny model in eval mode, with dropout configured (eval must switch it off).
    ``ids`` overrides BOS/EOS/padding (e.g. R2Gen's single id 0 for all three). ``boost`` adds a
    constant to some tokens' logits (through the final LayerNorm's bias, which the tied output
    layer turns into ``c`` on that token), e.g. to make one token dominate."""
    torch.manual_seed(seed)
    ids = ids or dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)
    m = ReportGenerator(ModelConfig.preset("tiny", V, image_size=32, max_len=12, dropout=0.1, **ids, **kw)).eval()
    with torch.no_grad():
        for tok, c in (boost or {}).items():
            w = m.tok_emb.weight[tok]
            m.dec_ln.bias += c * w / w.norm() ** 2
    return m


def images_for(seed: int, B: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (B, 2, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def ngrams(seq: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def banned_next(generated: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in ``generated`` (the rule, written plainly)."""
    if n <= 0 or len(generated) < n:
        return set()
    prefix = tuple(generated[len(generated) - n + 1:])
    return {g[-1] for g in ngrams(generated, n) if g[:-1] == prefix}


def reference_beam(m: ReportGenerator, memory: torch.Tensor, max_len: int, k: int, n: int = 0,
                   length_penalty: float = 0.0) -> list[list[int]]:
    """The list-based beam search that the batched one replaced (one study at a time, the whole
    prefix re-run every step), plus the no-repeat rule and the length penalty as documented."""
    cfg, out = m.config, []
    for i in range(memory.shape[0]):
        beams = [([cfg.bos_id], 0.0, False)]
        for _ in range(max_len):
            live = [b for b in beams if not b[2]]
            if not live:
                break
            seqs = torch.tensor([b[0] for b in live])
            logp = m.decode(seqs, memory[i:i + 1].expand(len(live), -1, -1))[:, -1].float().log_softmax(-1)
            cand = [b for b in beams if b[2]]
            for j, b in enumerate(live):
                for tok in banned_next(b[0][1:], n):
                    logp[j, tok] = float("-inf")
                top = logp[j].topk(k)
                for lp, tok in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    cand.append((b[0] + [tok], b[1] + lp, tok == cfg.eos_id))
            beams = sorted(cand, key=lambda b: -b[1] / (len(b[0]) - 1) ** length_penalty)[:k]
        out.append(m._strip(beams[0][0][1:]))
    return out


def memory_of(m: ReportGenerator, images: torch.Tensor) -> torch.Tensor:
    visual = m.encode(images)
    return m.decoder_memory(visual, m.classify(visual))


@pytest.mark.parametrize("prompt", [False, True])
def test_cached_step_logits_match_the_teacher_forced_decoder(prompt):
    m = decoder(0, diagnosis_prompt=prompt)
    images, tokens, _, _ = batch(B=3, T=10)
    memory = memory_of(m, images)
    full = m.decode(tokens, memory)
    cache = m._new_cache(memory)
    steps = torch.stack([m._next_logits(tokens[:, :t + 1], memory, cache) for t in range(10)], dim=1)
    assert cache[0]["k"].shape[2] == 10 and cache[0]["xk"].shape[2] == memory.shape[1]
    assert torch.allclose(steps, full, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompt", [False, True])
@pytest.mark.parametrize("boost", [None, {EOS: 0.35}, {7: 3.0}], ids=["plain", "eos-prone", "repeat-prone"])
def test_cached_and_uncached_decoding_give_identical_tokens(seed, prompt, boost):
    m = decoder(seed, boost, diagnosis_prompt=prompt)
    images = images_for(seed)
    for beam in (1, 3):
        for n in (0, 2):
            kw = dict(beam_size=beam, no_repeat_ngram=n)
            cached = m.generate(images, **kw)
            assert cached == m.generate(images, use_cache=False, **kw), kw
            assert len(cached) == 4 and all(len(s) <= 12 for s in cached)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("boost", [None, {EOS: 0.35}, {7: 3.0}], ids=["plain", "eos-prone", "repeat-prone"])
def test_batched_beam_equals_the_list_reference(seed, boost):
    """The batched beam search (cached or not) makes the same choices as the plain list version:
    the default (n=0, no length penalty) is the search as it was before batching."""
    m = decoder(seed, boost, diagnosis_prompt=seed == 1)
    images = images_for(seed, B=3)
    memory = memory_of(m, images)
    for k, n, lp in [(2, 0, 0.0), (3, 0, 0.0), (3, 2, 0.0), (3, 0, 1.0), (4, 3, 0.6)]:
        ref = reference_beam(m, memory, 10, k, n, lp)
        for cache in (True, False):
            assert m.generate(images, max_len=10, beam_size=k, no_repeat_ngram=n, length_penalty=lp,
                              use_cache=cache) == ref, (k, n, lp, cache)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_generated_sequence_repeats_an_ngram(n):
    # token 7 dominates: unconstrained decoding repeats it, so the rule has work to do
    for seed in (0, 1, 2):
        m = decoder(seed, {7: 3.0}, diagnosis_prompt=seed == 2)
        images = images_for(seed)
        assert all(len(set(ngrams(s, n))) < len(ngrams(s, n)) for s in m.generate(images))
        for beam in (1, 3):
            for cache in (True, False):
                for s in m.generate(images, beam_size=beam, no_repeat_ngram=n, use_cache=cache):
                    grams = ngrams(s, n)
                    assert len(grams) == len(set(grams)), (seed, beam, cache, s)
                    assert len(s) > n  # the rule steers away from repeats; it does not end the report


@pytest.mark.parametrize("n", [0, 2])
def test_beam_of_one_is_greedy(n):
    for seed in (0, 1, 2):
        m = decoder(seed, {EOS: 0.35} if seed == 1 else None)
        memory = memory_of(m, images_for(seed))
        greedy = m._greedy(memory, 12, n)
        assert m._beam(memory, 12, 1, n) == greedy
        assert m._beam(memory, 12, 1, n, use_cache=False) == greedy


@pytest.mark.parametrize("ids, eos_boost", [(dict(bos_id=BOS, eos_id=EOS, pad_id=PAD), 0.35),
                                             (dict(bos_id=0, eos_id=0, pad_id=0), 0.0)],
                         ids=["distinct", "r2gen-one-id"])
def test_greedy_stops_at_eos_and_returns_ids_without_bos_and_eos(ids, eos_boost):
    """Each returned sequence is what the teacher-forced model would pick token by token (under
    the no-repeat rule), and it ends where the model picks EOS or at max_len: BOS and EOS are
    not returned."""
    eos, lengths = ids["eos_id"], set()
    for seed in (0, 1, 2):
        m = decoder(seed, {eos: eos_boost}, ids=ids)
        images = images_for(seed)
        memory = memory_of(m, images)
        for n in (0, 1, 2):
            for row, s in enumerate(m.generate(images, no_repeat_ngram=n)):
                lengths.add(len(s))
                assert eos not in s
                logits = m.decode(torch.tensor([[ids["bos_id"]] + s]), memory[row:row + 1])[0]
                for t in range(len(s) + 1):
                    logits[t, list(banned_next(s[:t], n))] = float("-inf")
                picks = logits.argmax(-1).tolist()
                assert picks[:-1] == s
                assert len(s) == 12 or picks[-1] == eos
    # an immediate EOS, one in the middle, and a report cut at max_len all occurred
    assert 0 in lengths and 12 in lengths and any(0 < n < 12 for n in lengths), lengths


def test_length_penalty_favours_longer_reports():
    m = decoder(1, {EOS: 0.35})  # greedy and plain beam search stop at once here
    images = images_for(1)
    assert all(s == [] for s in m.generate(images, beam_size=3))
    assert all(len(s) > 0 for s in m.generate(images, beam_size=3, length_penalty=1.0))


@pytest.mark.skipif(not os.environ.get("CAMEGRAD_TIMING"), reason="timing print; set CAMEGRAD_TIMING=1 and use -s")
def test_print_cached_vs_uncached_timing():
    torch.manual_seed(0)
    m = ReportGenerator(ModelConfig.preset("small", 760, image_size=64, bos_id=BOS, eos_id=EOS, pad_id=PAD)).eval()
    images = images_for(0, B=100).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    for beam in (1, 3):
        times = {}
        for cache in (True, False):
            t0 = time.perf_counter()
            out = m.generate(images, max_len=60, beam_size=beam, use_cache=cache)
            times[cache] = time.perf_counter() - t0
        print(f"\nsmall, 64 px, batch 100, max_len 60, beam {beam}, {torch.get_num_threads()} thread(s): "
              f"cached {times[True]:.2f} s, uncached {times[False]:.2f} s, speedup {times[False] / times[True]:.1f}x "
              f"(mean length {sum(map(len, out)) / len(out):.0f})")


@pytest.mark.parametrize("r", [1, 2])
def test_no_token_runs_longer_than_max_run(r):
    # token 7 dominates: unconstrained decoding writes it many times in a row
    for seed in (0, 1, 2):
        m = decoder(seed, {7: 3.0}, diagnosis_prompt=seed == 2)
        images = images_for(seed)
        assert any(s[i:i + r + 1] == [s[i]] * (r + 1) for s in m.generate(images) for i in range(len(s) - r))
        for beam in (1, 3):
            for cache in (True, False):
                for s in m.generate(images, beam_size=beam, max_run=r, use_cache=cache):
                    runs = [s[i:i + r + 1] for i in range(len(s) - r)]
                    assert all(len(set(w)) > 1 for w in runs), (seed, beam, cache, s)


def test_min_len_forbids_eos_before_it_and_nothing_else():
    for seed in (0, 1):
        m = decoder(seed, {EOS: 1.5})
        images = images_for(seed)
        free = m.generate(images)
        assert min(len(s) for s in free) < 6  # EOS comes early without the rule
        for beam in (1, 3):
            for cache in (True, False):
                out = m.generate(images, beam_size=beam, min_len=6, use_cache=cache)
                assert all(len(s) >= 6 for s in out), (seed, beam, cache, out)
        # past min_len the greedy path is the unconstrained one again: same argmax rule
        assert m.generate(images, min_len=0) == free
    with pytest.raises(ValueError, match="min_len"):
        m.generate(images, min_len=-1)
