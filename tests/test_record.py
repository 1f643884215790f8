"""record(): counts against activations captured by the test's own hooks; padding; resume; cache."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    WIDTH,
    Interrupted,
    Seq,
    interrupt_after,
    random_ids,
    random_sequences,
    tiny_model,
)

from lape.errors import LapeError
from lape.fingerprint import fingerprint
from lape.neurons.stats import ActivationStats, RecordConfig, record

_seqs = random_sequences


def _act_modules(model, family):
    if family == "gpt2":
        return [block.mlp.act for block in model.transformer.h]
    return [layer.mlp.act_fn for layer in model.model.layers]


def _expected(model, family, batches, first=False):
    """Counts and sums from the test's own forward hooks on the activation modules, over the
    given ``(ids [B, T], mask [B, T])`` batches, keeping only positions with mask 1 and (unless
    ``first``) leaving out the first position of every sequence (the BOS / attention sink)."""
    modules = _act_modules(model, family)
    n_layers, width = len(modules), WIDTH[family]
    fire = torch.zeros(n_layers, width, dtype=torch.int64)
    sums = torch.zeros(n_layers, width, dtype=torch.float64)
    pos = torch.zeros(n_layers, width, dtype=torch.float64)
    captured: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o.detach().clone()))
               for i, m in enumerate(modules)]
    tokens = 0
    try:
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
                real = mask.bool().clone()
                if not first:
                    real[:, 0] = False
                tokens += int(real.sum())
                for layer in range(n_layers):
                    a = captured[layer][real].double()  # (real tokens, neurons)
                    fire[layer] += (a > 0).sum(0)
                    sums[layer] += a.sum(0)
                    pos[layer] += torch.where(a > 0, a, 0.0).sum(0)
    finally:
        for h in handles:
            h.remove()
    return fire, sums, pos, tokens


def _stack(seqs):
    """Right-pad a list of sequences into one batch (written here, not lape's helper)."""
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s.input_ids)] = s.input_ids
        mask[i, :len(s.attention_mask)] = s.attention_mask
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_counts_and_sums_match_own_hooks_with_padding(family):
    model = tiny_model(family)
    # "a": 5 sequences of 6 tokens, the last with 2 padded positions (batches 2 + 2 + 1).
    # "b": 3 sequences, the second with mask zeros inside a full batch, the third shorter (its
    # batch of one has no padding).
    a = _seqs(5, 6, seed=1, real_last=4)
    b = _seqs(2, 6, seed=2, real_last=3) + [Seq(random_ids(1, 4, seed=3)[0], torch.ones(4, dtype=torch.long))]
    corpus = {"a": a, "b": b}
    head_calls = []
    h = model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1))
    try:
        stats = record(model, corpus, RecordConfig(batch_size=2), progress=False)
    finally:
        h.remove()
    assert head_calls == []  # the LM head never ran
    assert stats.languages == ["a", "b"]
    assert stats.fire_counts.dtype == torch.int64 and stats.token_counts.dtype == torch.int64
    for k, seqs in enumerate(corpus.values()):
        batches = [_stack(seqs[i:i + 2]) for i in range(0, len(seqs), 2)]
        fire, sums, pos, tokens = _expected(model, family, batches)
        assert tokens == sum(int(s.attention_mask.sum()) - 1 for s in seqs)  # all but the first position
        assert int(stats.token_counts[k]) == tokens
        assert torch.equal(stats.fire_counts[k], fire)
        torch.testing.assert_close(stats.act_sums[k], sums, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats.fire_sums[k], pos, rtol=1e-5, atol=1e-4)
    # the padded positions had activations that would have changed the counts
    ids, _ = _stack(a[-1:])
    full = Seq(ids[0], torch.ones(6, dtype=torch.long))
    fire_pad, *_ = _expected(model, family, [_stack([full])])
    fire_real, *_ = _expected(model, family, [_stack(a[-1:])])
    assert not torch.equal(fire_pad, fire_real)
    # ... and so would the first position of each sequence, which is left out
    with_first, *_ = _expected(model, family, [_stack(a[i:i + 2]) for i in range(0, len(a), 2)], first=True)
    assert not torch.equal(with_first, stats.fire_counts[0])


def test_sequences_of_different_lengths_in_the_last_partial_batch_are_padded():
    model = tiny_model("llama")
    seqs = [*_seqs(3, 6, seed=4), Seq(random_ids(1, 3, seed=5)[0], torch.ones(3, dtype=torch.long))]
    stats = record(model, {"a": seqs, "b": seqs[:2]}, RecordConfig(batch_size=3), progress=False)
    fire, _, pos, tokens = _expected(model, "llama", [_stack(seqs[:3]), _stack(seqs[3:])])
    assert int(stats.token_counts[0]) == tokens == 21 - 4  # the first position of 4 sequences left out
    assert torch.equal(stats.fire_counts[0], fire)
    torch.testing.assert_close(stats.fire_sums[0], pos, rtol=1e-5, atol=1e-4)


def test_short_sequence_inside_a_full_batch_is_padded():
    model = tiny_model("llama")
    seqs = [*_seqs(1, 6, seed=6), Seq(random_ids(1, 3, seed=7)[0], torch.ones(3, dtype=torch.long))]
    stats = record(model, {"a": seqs, "b": seqs}, RecordConfig(batch_size=2), progress=False)
    fire, *_ = _expected(model, "llama", [_stack(seqs)])
    assert torch.equal(stats.fire_counts[0], fire)


def _count_calls(module):
    calls = []
    return calls, module.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)


def test_resume_after_interruption_gives_identical_counts(tmp_path):
    model = tiny_model("llama")
    corpus = {"a": _seqs(4, 5, seed=8, real_last=2), "b": _seqs(3, 5, seed=9)}
    cfg = RecordConfig(batch_size=1, checkpoint_every=1)
    reference = record(model, corpus, cfg, progress=False)
    total_batches = 7

    n_before_interrupt = 5  # batches 1-5 finish (all of "a", one of "b"); the 6th call raises
    with pytest.raises(Interrupted), interrupt_after(model.base_model, n_before_interrupt):
        record(model, corpus, cfg, out=tmp_path, progress=False)
    assert not (tmp_path / "stats.json").exists()
    assert (tmp_path / "partial" / "a" / "partial.json").exists()

    calls, handle = _count_calls(model.base_model)
    try:
        resumed = record(model, corpus, cfg, out=tmp_path, progress=False)
    finally:
        handle.remove()
    assert len(calls) == total_batches - n_before_interrupt  # only the missing batches ran
    for name in ("fire_counts", "token_counts", "act_sums", "fire_sums"):
        assert torch.equal(getattr(resumed, name), getattr(reference, name)), name

    # a third run with the same inputs loads the artifact without running the model
    calls, handle = _count_calls(model.base_model)
    try:
        again = record(model, corpus, cfg, out=tmp_path, progress=False)
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(again.fire_counts, reference.fire_counts)
    assert torch.equal(again.token_counts, reference.token_counts)


def test_changed_corpus_is_not_served_from_the_cache(tmp_path):
    """The cache key covers the sequences themselves, not only the settings."""
    model = tiny_model("llama")
    corpus = {"a": _seqs(2, 5, seed=10), "b": _seqs(2, 5, seed=11)}
    first = record(model, corpus, RecordConfig(batch_size=2), out=tmp_path, progress=False)
    calls, handle = _count_calls(model.base_model)
    try:  # the same settings over other text of "a": recounted, not served from the cache
        changed = record(model, {"a": _seqs(2, 5, seed=12), "b": corpus["b"]}, RecordConfig(batch_size=2),
                         out=tmp_path, progress=False)
        again = record(model, {"a": _seqs(2, 5, seed=12), "b": corpus["b"]}, RecordConfig(batch_size=2),
                       out=tmp_path, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 2 and again.from_cache  # two languages counted once, then skipped
    assert not torch.equal(changed.fire_counts[0], first.fire_counts[0])
    assert torch.equal(changed.fire_counts[1], first.fire_counts[1])


class _Tok:
    """One token per character (code point mod 90 + 3), BOS 1, EOS 2, PAD 0: fits the tiny models."""

    bos_token_id, eos_token_id, pad_token_id, name_or_path = 1, 2, 0, "tiny-chars"

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[ord(c) % 90 + 3 for c in t] for t in texts]}


def test_text_changed_behind_an_unchanged_manifest_is_recounted(tmp_path):
    """Replacing en.txt behind the same manifest changes the key (issue: stale statistics)."""
    from lape.corpora import load_corpus, load_manifest

    (tmp_path / "en.txt").write_text("the cat sat on the mat\nand looked at the dog\n" * 4)
    (tmp_path / "fr.txt").write_text("le chat est sur le tapis\net regarde le chien\n" * 4)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("languages:\n  en: {train: {kind: text, path: en.txt}}\n  fr: {train: {kind: text, path: fr.txt}}\n")
    model = tiny_model("llama")

    def run(budget=None):
        corpus = load_corpus(load_manifest(manifest), _Tok(), tokens_per_language=budget or 60, seq_len=16)
        return record(model, corpus, RecordConfig(), out=tmp_path / "stats", progress=False)

    first = run()
    assert run().from_cache
    (tmp_path / "en.txt").write_text("a completely different english text\nwith other words\n" * 4)
    second = run()
    assert not second.from_cache and not torch.equal(second.fire_counts[0], first.fire_counts[0])
    # the sidecar describes what was recorded (the streams' budget), not the default config
    third = run(budget=40)
    assert not third.from_cache
    assert ActivationStats.load(tmp_path / "stats").meta["config"]["tokens_per_language"] == 40
    assert third.meta["config"]["seq_len"] == 16 and third.meta["config"]["languages"] == ["en", "fr"]


def test_language_without_text_is_refused_before_any_model_pass():
    model = tiny_model("llama")
    calls, handle = _count_calls(model.base_model)
    try:
        with pytest.raises(LapeError) as err:
            record(model, {"a": _seqs(1, 4, seed=12), "b": []}, progress=False)
    finally:
        handle.remove()
    msg = str(err.value)
    assert "'b' has no text to run" in msg and "\n" not in msg
    assert calls == []  # "a" was not recorded first
    # a sequence whose only counted position would be the first one leaves nothing to count
    with pytest.raises(LapeError, match="'b' gave no tokens to count"):
        record(model, {"a": _seqs(1, 4, seed=12), "b": [Seq(torch.tensor([5]), torch.ones(1, dtype=torch.long))]},
               progress=False)


def test_stats_save_load_roundtrip_and_fingerprint_check(tmp_path):
    model = tiny_model("llama")
    stats = record(model, {"a": _seqs(2, 5, seed=13), "b": _seqs(2, 5, seed=14)}, progress=False)
    stats.save(tmp_path / "stats")
    back = ActivationStats.load(tmp_path / "stats", model=model)
    assert back.languages == ["a", "b"]
    for name in ("fire_counts", "token_counts", "act_sums", "fire_sums"):
        assert torch.equal(getattr(back, name), getattr(stats, name))
        assert getattr(back, name).dtype == getattr(stats, name).dtype
    assert back.meta["token_counts"] == {"a": 8, "b": 8}  # 2 x 5 tokens, the first of each left out
    assert back.meta["num_layers"] == 3 and back.meta["neurons_per_layer"] == WIDTH["llama"]

    other = tiny_model("llama", seed=1)
    mine, theirs = fingerprint(model)["checksum"][:8], fingerprint(other)["checksum"][:8]
    assert mine != theirs
    with pytest.raises(LapeError) as err:
        ActivationStats.load(tmp_path / "stats", model=other)
    msg = str(err.value)
    assert mine in msg and theirs in msg and "tiny-llama" in msg and "\n" not in msg
