"""Key neurons (Chen et al. 2024, NA-ICA): integrated gradients, selection, boost/suppress evaluation.

Everything runs on the tiny random models of ``tiny_models``. The library's fast paths (the
prefix KV cache, layer x step rows batched as one-token continuations, edits at the last
position only) are checked against plain, slow implementations written here: a full forward of
the whole prompt per (layer, step) with a hook that replaces one layer's last-position
activations. The selection is checked on hand-made scores whose answer is worked out by hand,
and the CLI runs attribute -> select -> eval on a tiny model folder, once in this process and
once as two gloo ranks under ``torchrun``.

The shipped ``char_tokenizer`` has no capital letters, colon or newline, so the option letters of
the shipped English templates are all ``<unk>``: ``letter_spellings`` refuses it (checked
below), and the tests use :func:`ext_tokenizer`, the same character tokenizer with those
characters added.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import CHAR_SPECIALS, char_tokenizer, random_ids, tiny_model

from lape.autograd import gradients_for
from lape.cli import main
from lape.errors import LapeError
from lape.head import check_head
from lape.hooks import activation_hooks
from lape.intervene import Edit
from lape.keyneurons.attribute import KeyNeuronScores, attribute, letter_spellings, prompt_ids
from lape.keyneurons.evaluate import (
    KeyEvalConfig,
    _prompt_pass,
    evaluate_key_neurons,
)
from lape.keyneurons.ig import (
    attribute_prompt,
    last_position,
    prefix_cache,
)
from lape.keyneurons.prompts import Question, prompts_for
from lape.keyneurons.select import KeyNeuronMaps, SelectConfig, na_ica, select
from lape.masks import NeuronSets, random_like_mask
from lape.space import NeuronSpace

EXT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:?-\n"
TIMEOUT = 300


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models gain nothing from more threads


def ext_tokenizer():
    """``tiny_models.char_tokenizer`` plus capitals, digits, ``:?-`` and newline (73 ids, fits the
    tiny models' 96): the shipped English templates and option letters are then real tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*CHAR_SPECIALS, *EXT_CHARS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # newline too
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


# --------------------------------------------------------------------------------------------
# Plain reference implementations


def _put_last(x: torch.Tensor):
    """A hook fn replacing the last position's activations by ``x`` (batch 1; OPT's MLP sees
    ``[T, N]``, the others ``[1, T, N]``: the last row of the flattened tensor either way)."""
    def fn(layer: int, act: torch.Tensor) -> torch.Tensor:
        flat = act.reshape(-1, act.shape[-1])
        return torch.cat([flat[:-1], x[None].to(act.dtype)]).reshape(act.shape)
    return fn


def _last_acts(model, space, ids: torch.Tensor) -> torch.Tensor:
    """Unmodified last-position activations ``[L, N]`` from one full forward."""
    acts = {}

    def grab(layer, act):
        acts[layer] = act.reshape(-1, act.shape[-1])[-1].detach().clone()

    with torch.no_grad(), activation_hooks(model, space, grab):
        model(ids[None])
    return torch.stack([acts[layer] for layer in range(space.num_layers)])


def _full_probs(model, space, ids: torch.Tensor, mult: torch.Tensor | None = None,
                positions: str = "last") -> torch.Tensor:
    """Softmax at the last position of a full forward of ``ids``; with ``mult`` ``[L, N]`` the
    activations of the last position (or of ``positions="all"``) are multiplied by it."""
    def fn(layer, act):
        flat = act.reshape(-1, act.shape[-1])
        m = mult[layer].to(act.dtype)
        if positions == "all":
            return (flat * m).reshape(act.shape)
        return torch.cat([flat[:-1], flat[-1:] * m]).reshape(act.shape)

    with torch.no_grad():
        if mult is None:
            logits = model(ids[None]).logits[0, -1]
        else:
            with activation_hooks(model, space, fn):
                logits = model(ids[None]).logits[0, -1]
    return logits.float().softmax(-1)


def _reference_ig(model, space, ids: torch.Tensor, target: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients the slow way: per layer and step a full forward of the whole prompt
    with only that layer's last-position activations replaced by ``k/m x`` the unmodified ones;
    also ``P(target)`` with that layer's last position zeroed. (scores ``[L, N]``, p_zero ``[L]``)."""
    base = _last_acts(model, space, ids)
    L, N = space.shape
    scores, p_zero = torch.zeros(L, N), torch.zeros(L)
    for layer in range(L):
        grad_sum = torch.zeros(N)
        for k in range(1, steps + 1):
            x = (k / steps * base[layer]).detach().requires_grad_(True)
            with torch.enable_grad(), activation_hooks(model, space, _put_last(x), layers=[layer]):
                p = model(ids[None]).logits[0, -1].float().softmax(-1)[target]
            (g,) = torch.autograd.grad(p, x)
            grad_sum += g
        scores[layer] = base[layer] * grad_sum / steps
        with torch.no_grad(), activation_hooks(model, space, _put_last(torch.zeros(N)), layers=[layer]):
            p_zero[layer] = model(ids[None]).logits[0, -1].float().softmax(-1)[target]
    return scores, p_zero


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal within ``rel`` of the larger tensor's scale (entries near 0 have no relative error)."""
    scale = float(b.abs().max()) or 1.0
    torch.testing.assert_close(a.float(), b.float(), rtol=rel, atol=rel * scale)


# --------------------------------------------------------------------------------------------
# 1. Completeness


def test_ig_completeness_converges_with_steps():
    """Catches: a wrong step grid (e.g. alphas without the 1/m scale or the left sum swapped in
    without a matching baseline), a wrong ``prob``/``prob_base``, scores not multiplied by the
    activation or not divided by m: the per-layer sum must approach ``P(a) - P(0 at l)`` as ``1/m``."""
    model = tiny_model("llama")
    space = NeuronSpace.of(model)
    ids = random_ids(1, 12, seed=3)[0]
    target = 5
    runs = {m: attribute_prompt(model, space, ids, target, steps=m, batch_size=50) for m in (4, 16, 64, 256)}
    # prob and prob_base equal an independent full forward (unmodified / one layer's last position zeroed)
    p_full = _full_probs(model, space, ids)[target]
    for r in runs.values():
        assert r.target == target
        assert r.prob == pytest.approx(float(p_full), rel=1e-5)
        for layer in range(space.num_layers):
            zero = torch.ones(space.shape)
            zero[layer] = 0.0
            p0 = _full_probs(model, space, ids, zero)[target]
            assert float(r.prob_base[layer]) == pytest.approx(float(p0), rel=1e-5, abs=1e-9)
    gap = runs[4].prob - runs[4].prob_base
    assert bool((gap.abs() > 1e-4).all()), "every layer should matter for this prompt"
    deltas = {m: r.convergence_delta().abs() for m, r in runs.items()}
    assert bool((deltas[16] < deltas[4]).all()), (deltas[4], deltas[16])
    for small, big in ((16, 64), (64, 256)):
        # right Riemann sum: the error falls as 1/m once m is not tiny, i.e. ~4x per 4x steps
        assert bool((deltas[big] < deltas[small] / 3).all()), (small, big, deltas[small], deltas[big])
    assert bool((deltas[64] < 0.05 * gap.abs()).all()), (deltas[64], gap)
    assert bool((deltas[256] < 0.01 * gap.abs()).all()), (deltas[256], gap)
    # the delta is what it says: sum of scores minus the gap
    r = runs[64]
    torch.testing.assert_close(r.scores.sum(1), r.prob - r.prob_base, rtol=0.0, atol=float(deltas[64].max()) * 1.0001)
    torch.testing.assert_close(r.convergence_delta(), r.scores.sum(1) - (r.prob - r.prob_base))


# --------------------------------------------------------------------------------------------
# 2. The batched KV-cache path against a plain loop


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt", "bloom"])
def test_batched_kv_cache_ig_equals_the_plain_loop(family):
    """Catches: a wrong prefix cache (not repeated per row, reused after a pass appended to it),
    a row edited at the wrong layer or position, chunking that drops or double counts rows when
    ``batch_size`` does not divide ``layers x (steps + 1)`` (3 x 5 = 15 rows, chunks of 7), OPT's
    flattened ``[rows, N]`` activations mis-indexed, a wrong zero baseline."""
    model = tiny_model(family)
    space = NeuronSpace.of(model)
    ids = random_ids(1, 10, seed=11)[0]
    steps, target = 4, 17
    ref, p_zero = _reference_ig(model, space, ids, target, steps)
    assert float(ref.abs().max()) > 1e-6
    res = attribute_prompt(model, space, ids, target, steps=steps, batch_size=7, watch=[target, 3])
    _close(res.scores, ref)
    _close(res.prob_base, p_zero)
    p = _full_probs(model, space, ids)
    assert res.prob == pytest.approx(float(p[target]), rel=1e-5)
    _close(res.probs, p[[target, 3]])
    # the parameters were given back their requires_grad flags, the model its mode
    assert all(q.requires_grad for q in model.parameters()) and not model.training
    if family == "llama":  # a layer subset: the others are 0, the chosen ones unchanged
        sub = attribute_prompt(model, space, ids, target, steps=steps, layers=[0, 2], batch_size=4)
        assert torch.equal(sub.scores[1], torch.zeros(space.neurons_per_layer))
        _close(sub.scores[[0, 2]], ref[[0, 2]])
        assert math.isnan(float(sub.prob_base[1]))
        # a callable target: picks from the unmodified probabilities
        picked = attribute_prompt(model, space, ids, lambda probs: int(probs.argmax()), steps=2)
        assert picked.target == int(p.argmax())


def test_ig_refuses_bad_arguments():
    model = tiny_model("llama")
    space = NeuronSpace.of(model)
    ids = random_ids(1, 5)[0]
    for kwargs in ({"steps": 0}, {"batch_size": 0}):
        with pytest.raises(LapeError):
            attribute_prompt(model, space, ids, 5, **kwargs)
    with pytest.raises(LapeError, match="outside the vocabulary"):
        attribute_prompt(model, space, ids, 10_000)
    with pytest.raises(LapeError, match="1-D"):
        attribute_prompt(model, space, ids[None], 5)


# --------------------------------------------------------------------------------------------
# 3. NA-ICA on hand-made scores

Q, L, N = 5, 2, 4
# flat neuron index n = layer * N + i; kept[q][n]
KEPT = {
    0: {0: 1.0, 1: 2.0, 2: 3.0},
    1: {0: 1.0, 1: 2.0, 3: 0.5},
    2: {0: 1.0, 1: 2.0, 7: 1.5},
    3: {0: 1.0, 4: 4.0, 7: 0.75},
    4: {0: 1.0, 5: 0.25},
}
TOTAL = [10.0, 5.0, -1.0, 8.0, 2.0]  # question 2: Z <= 0, falls back to its kept sum (4.5)
# counts: n0 5 (every question), n1 3, n2 1, n3 1, n4 1, n5 1, n6 0, n7 2


def _kept() -> torch.Tensor:
    kept = torch.zeros(Q, L * N)
    for q, row in KEPT.items():
        for n, v in row.items():
            kept[q, n] = v
    return kept.view(Q, L, N)


def _key_sets(res) -> list[set[int]]:
    return [set(res.key[q].flatten().nonzero().flatten().tolist()) for q in range(Q)]


def test_na_ica_on_hand_made_scores():
    """Catches: ica with the wrong log argument, common neurons with >= instead of > or
    without int(), common neurons not removed (the released code's string-vs-int bug) or
    removed when they should be kept, top_v ignored, ICA applied when ica=False, the wrong
    normaliser, a non-positive Z used as is instead of the kept sum, fallbacks not counted."""
    kept, total = _kept(), torch.tensor(TOTAL)
    cfg = SelectConfig(normaliser="all", common_share=0.3)  # int(0.3 * 5) = 1: common when in 2 or more clusters
    res = na_ica(kept, total, cfg)
    counts = [5, 3, 1, 1, 1, 1, 0, 2]
    assert res.counts.flatten().tolist() == counts
    torch.testing.assert_close(res.ica.flatten(), torch.tensor([math.log(5 / (c + 1)) for c in counts]))
    assert res.common.flatten().tolist() == [True, True, False, False, False, False, False, True]
    assert res.fallbacks == 1
    # naica = kept / Z * ica, Z the total (question 2: its kept sum 1 + 2 + 1.5)
    z = [10.0, 5.0, 4.5, 8.0, 2.0]
    for q in range(Q):
        for n in range(L * N):
            want = KEPT[q].get(n, 0.0) / z[q] * math.log(5 / (counts[n] + 1))
            assert float(res.naica[q].flatten()[n]) == pytest.approx(want, rel=1e-6, abs=1e-12), (q, n)
    # n0 (in every cluster) has ica < 0: never a key neuron; n1, n7 common: removed
    assert _key_sets(res) == [{2}, {3}, set(), {4}, {5}]

    keep_common = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.3, exclude_common=False))
    assert _key_sets(keep_common) == [{1, 2}, {1, 3}, {1, 7}, {4, 7}, {5}]  # n0 still out: ica < 0

    # plain NA (no ICA): the neuron in every cluster is a candidate, and common: removed / kept
    na = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.3, ica=False))
    torch.testing.assert_close(na.naica, kept / torch.tensor(z)[:, None, None])
    assert _key_sets(na) == [{2}, {3}, set(), {4}, {5}]
    na_all = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.3, ica=False, exclude_common=False))
    assert _key_sets(na_all) == [set(KEPT[q]) for q in range(Q)]
    assert all(0 in s for s in _key_sets(na_all))

    # top_v: the best neuron per question; ICA changes the ranking of question 2
    # (na: n1 2/4.5 > n7 1.5/4.5; naica: n1 2/4.5 log(5/4) = 0.099 < n7 1.5/4.5 log(5/3) = 0.170)
    top1 = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.3, top_v=1, exclude_common=False))
    assert _key_sets(top1) == [{2}, {3}, {7}, {4}, {5}]
    top1_na = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.3, top_v=1, ica=False, exclude_common=False))
    assert _key_sets(top1_na) == [{2}, {1}, {1}, {4}, {0}]
    top2 = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.3, top_v=2, ica=False, exclude_common=False))
    assert [len(s) for s in _key_sets(top2)] == [2, 2, 2, 2, 2]
    assert _key_sets(top2)[0] == {1, 2}

    # normaliser "kept": Z is the kept sum for every question, no fallbacks counted
    kept_z = [6.0, 3.5, 4.5, 5.75, 1.25]
    by_kept = na_ica(kept, total, SelectConfig(common_share=0.3, ica=False, normaliser="kept"))
    torch.testing.assert_close(by_kept.naica, kept / torch.tensor(kept_z)[:, None, None])
    assert by_kept.fallbacks == 0
    assert float(by_kept.naica[0, 0, 2]) == pytest.approx(3.0 / 6.0)
    assert float(na.naica[0, 0, 2]) == pytest.approx(3.0 / 10.0)

    # a larger u: n1 (3 clusters) and n7 (2) are no longer common (int(0.6 * 5) = 3)
    wide = na_ica(kept, total, SelectConfig(normaliser="all", common_share=0.6))
    assert wide.common.flatten().tolist() == [True] + [False] * 7
    assert _key_sets(wide) == [{1, 2}, {1, 3}, {1, 7}, {4, 7}, {5}]

    with pytest.raises(LapeError):
        na_ica(kept[0], total)


def _scores_artifact() -> KeyNeuronScores:
    kept, total = _kept(), torch.tensor(TOTAL)
    groups = {"x": [0, 1, 2], "y": [3, 4]}
    T = 2
    tensors = {}
    for c, rows in groups.items():
        tensors[f"{c}/kept"] = kept[rows].clone()
        tensors[f"{c}/total"] = total[rows].clone()
        tensors[f"{c}/abs_total"] = total[rows].abs() + 1.0
        tensors[f"{c}/rank_corr"] = torch.full((len(rows), T), 0.5)
        tensors[f"{c}/raw"] = kept[rows].sum(0)
        tensors[f"{c}/prob"] = torch.full((len(rows), T), 0.25)
        tensors[f"{c}/correct"] = torch.ones(len(rows), T)
        tensors[f"{c}/gap"] = torch.full((len(rows), T, L), 0.1)
        tensors[f"{c}/delta"] = torch.full((len(rows), T, L), 0.001)
    return KeyNeuronScores(["x", "y"], {"x": ["q0", "q1", "q2"], "y": ["q3", "q4"]}, tensors)


def test_select_unions_question_keys_per_cluster_and_caches(tmp_path):
    """Catches: masks not the union of the cluster's questions' key neurons (questions assigned
    to the wrong cluster when concatenated), a save/load round trip that loses anything, a cache
    that serves a result made with another config, or never serves one."""
    scores = _scores_artifact()
    cfg = SelectConfig(normaliser="all", common_share=0.3, exclude_common=False)
    sets, maps = select(scores, cfg, out=tmp_path / "sel")
    assert sets.from_cache is False
    assert sets.labels == ["x", "y"] and sets.shape == (L, N)
    res = na_ica(_kept(), torch.tensor(TOTAL), cfg)  # keys [{1,2},{1,3},{1,7},{4,7},{5}]
    want = {"x": {1, 2, 3, 7}, "y": {4, 5, 7}}
    for c in ("x", "y"):
        assert set(sets.mask(c).flatten().nonzero().flatten().tolist()) == want[c]
    assert maps.uids == ["q0", "q1", "q2", "q3", "q4"]
    assert maps.per_question.tolist() == [2, 2, 2, 2, 1]
    assert torch.equal(maps.common, res.common) and torch.equal(maps.counts, res.counts)
    positive = torch.where(_kept() > 0, res.naica.clamp(min=0), torch.zeros(()))
    torch.testing.assert_close(maps.accumulated, torch.stack([positive[:3].sum(0), positive[3:].sum(0)]))
    assert sets.meta["normaliser_fallbacks"] == 1 and sets.meta["questions"] == 5

    # saved and reloaded: equal
    again_sets, again_maps = NeuronSets.load(tmp_path / "sel"), KeyNeuronMaps.load(tmp_path / "sel")
    assert again_sets.labels == sets.labels and torch.equal(again_sets.masks, sets.masks)
    assert again_maps.clusters == maps.clusters and again_maps.uids == maps.uids
    for name, t in maps.tensors().items():
        assert torch.equal(again_maps.tensors()[name], t), name

    # the same inputs: from the cache; another config: recomputed (and different)
    cached, cached_maps = select(scores, cfg, out=tmp_path / "sel")
    assert cached.from_cache is True and torch.equal(cached.masks, sets.masks)
    assert torch.equal(cached_maps.accumulated, maps.accumulated)
    other, _ = select(scores, SelectConfig(common_share=0.3), out=tmp_path / "sel")
    assert other.from_cache is False
    assert set(other.mask("x").flatten().nonzero().flatten().tolist()) == {2, 3}
    assert set(other.mask("y").flatten().nonzero().flatten().tolist()) == {4, 5}
    # changed scores (another identity): recomputed too
    changed = _scores_artifact()
    changed.tensors_["y/kept"][1, 1, 1] = 0.5
    assert select(changed, SelectConfig(common_share=0.3), out=tmp_path / "sel")[0].from_cache is False


# --------------------------------------------------------------------------------------------
# 4. Boost and suppress act on the chosen neurons at the last position only


def _down_inputs(model, space):
    """Forward pre-hooks on every down projection recording its input (after lape's edits);
    returns (calls list of (layer, tensor), handles)."""
    calls = []
    handles = [space.down_module(model, layer).register_forward_pre_hook(
        lambda mod, args, layer=layer: calls.append((layer, args[0].detach().clone())))
        for layer in range(space.num_layers)]
    return calls, handles


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_edits_change_only_the_chosen_neurons_at_the_last_position(family):
    """Catches: an edit applied to the prefix too, to the wrong rows or neurons, or put back at
    the wrong place (OPT's flattened activations), a multiplication that is not exact, and a
    prefix that is not the plain model's."""
    model = tiny_model(family)
    space = NeuronSpace.of(model)
    Lm, Nm = space.shape
    ids = random_ids(1, 9, seed=5)[0]
    check_head(model)  # its one-off check forward would otherwise show up among the recorded calls
    calls, handles = _down_inputs(model, space)
    try:
        with torch.no_grad():
            model(ids[None])
            full = {layer: t.reshape(-1, Nm) for layer, t in calls}  # [T, N] per layer
            calls.clear()
            with gradients_for(model, ()):
                cache = prefix_cache(model, ids)
            prefix = {layer: t.reshape(-1, Nm) for layer, t in calls}
            assert sorted(prefix) == list(range(Lm))
            for layer in range(Lm):  # the prefix: T - 1 positions, the plain model's
                assert prefix[layer].shape[0] == len(ids) - 1
                torch.testing.assert_close(prefix[layer], full[layer][:-1], rtol=1e-5, atol=1e-6)
            calls.clear()
            plain = last_position(model, space, ids, cache, 1)
            unmodified = {layer: t.reshape(-1, Nm) for layer, t in calls}
            for layer in range(Lm):
                torch.testing.assert_close(unmodified[layer][0], full[layer][-1], rtol=1e-5, atol=1e-6)
            chosen = unmodified[1][0].abs().topk(3).indices.tolist()  # non-zero (OPT's ReLU zeros many)
            for factor in (2.0, 0.0):
                calls.clear()
                edit = Edit(1, torch.tensor(chosen), "mul", factor)
                edited_logits = last_position(model, space, ids, cache, 1, [edit])
                edited = {layer: t.reshape(-1, Nm) for layer, t in calls}
                assert set(edited) == set(range(Lm)) and all(t.shape[0] == 1 for t in edited.values())
                assert torch.equal(edited[0], unmodified[0])  # before the edit: untouched
                others = [n for n in range(Nm) if n not in chosen]
                assert torch.equal(edited[1][:, others], unmodified[1][:, others])
                assert torch.equal(edited[1][:, chosen], unmodified[1][:, chosen] * factor)
                assert bool((unmodified[1][:, chosen] != 0).all())
                # the probabilities: a full forward editing only the last position the same way
                mult = torch.ones(Lm, Nm)
                mult[1, chosen] = factor
                _close(edited_logits[0].softmax(-1), _full_probs(model, space, ids, mult))
                assert not torch.allclose(edited_logits, plain)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_prompt_pass_rows_equal_full_forwards_editing_the_last_position(family):
    """``_prompt_pass`` (evaluate's per-prompt step): every row of several-layer multipliers, in
    chunks that do not divide the rows, equals a full forward editing the last position only
    (and differs from one editing every position, so the comparison can tell)."""
    model = tiny_model(family)
    space = NeuronSpace.of(model)
    tok = ext_tokenizer()
    q = Question("t/0", "which is the largest planet?", ("mars", "jupiter", "venus"), 1, "astro", "en")
    prompt = prompts_for(q)[0]
    ids = prompt_ids(tok, prompt.text)
    g = torch.Generator().manual_seed(0)
    mults = torch.ones(5, *space.shape)
    for r, factor in enumerate((2.0, 0.0, 2.0, 0.0, 1.0)):
        mask = torch.rand(space.shape, generator=g) < 0.2
        mults[r][mask] = factor
    with gradients_for(model, ()), torch.no_grad():
        p0, ok0, ps, oks, acts = _prompt_pass(model, space, tok, prompt, mults, batch_size=2)
    letters = [tok.convert_tokens_to_ids(x) for x in prompt.letters]
    plain = _full_probs(model, space, ids)
    assert p0 == pytest.approx(float(plain[letters[prompt.correct]]), rel=1e-5)
    assert ok0 == (int(plain[letters].argmax()) == prompt.correct)
    _close(acts, _last_acts(model, space, ids))
    assert ps.shape == oks.shape == (5,)
    for r in range(5):
        want = _full_probs(model, space, ids, mults[r])
        assert float(ps[r]) == pytest.approx(float(want[letters[prompt.correct]]), rel=1e-5)
        assert bool(oks[r]) == (int(want[letters].argmax()) == prompt.correct)
    everywhere = _full_probs(model, space, ids, mults[0], positions="all")[letters[prompt.correct]]
    assert abs(float(everywhere) - float(ps[0])) > 1e-4 * float(ps[0])


# --------------------------------------------------------------------------------------------
# 5. evaluate_key_neurons end to end


QUESTIONS = [
    Question("bio/0", "what carries oxygen in blood?", ("hemoglobin", "insulin", "keratin"), 0, "bio", "en"),
    Question("bio/1", "where is dna kept in a cell?", ("wall", "nucleus", "membrane", "vacuole"), 1, "bio", "en"),
    Question("bio/2", "what do plants make in light?", ("salt", "iron", "sugar"), 2, "bio", "en"),
    Question("geo/0", "which is the longest river?", ("nile", "thames", "seine"), 0, "geo", "en"),
    Question("geo/1", "which ocean is the largest?", ("arctic", "indian", "pacific", "atlantic"), 2, "geo", "en"),
    Question("geo/2", "what is the capital of peru?", ("quito", "lima"), 1, "geo", "en"),
]


def _sets(space, picks: dict[str, dict[int, list[int]]]) -> NeuronSets:
    masks = torch.zeros(len(picks), *space.shape, dtype=torch.bool)
    for k, per_layer in enumerate(picks.values()):
        for layer, neurons in per_layer.items():
            masks[k, layer, neurons] = True
    return NeuronSets(list(picks), masks)


def test_letter_spellings_need_the_letters_in_the_vocabulary():
    """The shipped character tokenizer has no capitals: every letter is <unk>, refused in one
    line; with the letters added the bare spelling is one token and the spaced one is two."""
    prompt = prompts_for(QUESTIONS[0])[0]
    with pytest.raises(LapeError) as err:
        letter_spellings(char_tokenizer(), prompt)
    assert "\n" not in str(err.value)
    tok = ext_tokenizer()
    for p in prompts_for(QUESTIONS[1]):
        found = letter_spellings(tok, p)
        assert found == {"": [tok.convert_tokens_to_ids(x) for x in "ABCD"]}
        assert tok.unk_token_id not in tok(p.text)["input_ids"]


def test_random_like_mask_keeps_the_counts_per_layer():
    mask = torch.zeros(3, 48, dtype=torch.bool)
    mask[0, [1, 2, 3]] = True
    mask[2, [40]] = True
    a = random_like_mask(mask, torch.Generator().manual_seed(1000))
    b = random_like_mask(mask, torch.Generator().manual_seed(1001))
    for m in (a, b):
        assert m.sum(1).tolist() == [3, 0, 1] and m.dtype == torch.bool
    assert not torch.equal(a, b) and not torch.equal(a, mask)
    assert torch.equal(a, random_like_mask(mask, torch.Generator().manual_seed(1000)))  # seeded


def test_evaluate_key_neurons_end_to_end(tmp_path):
    """Catches: random sets of another size per layer, missing (family, cluster, op) rows, a
    probability or correctness not the model's, unrelated prompts drawn from the related
    cluster, PCR and edit success not following their definitions, an unstable cache."""
    model = tiny_model("llama")
    space = NeuronSpace.of(model)
    tok = ext_tokenizer()
    sets = _sets(space, {"bio": {0: [1, 2], 2: [5]}, "geo": {1: [3, 4, 7]}})
    # the "na" sets are large (half of every layer), so that some edits flip answers
    na_sets = _sets(space, {"bio": {layer: list(range(0, 48, 2)) for layer in range(3)},
                            "geo": {layer: list(range(1, 48, 2)) for layer in range(3)}})
    config = KeyEvalConfig(random_seeds=2, templates=2, batch_size=5)
    ev = evaluate_key_neurons(model, tok, sets, QUESTIONS, config, na_sets=na_sets, out=tmp_path / "ev",
                              progress=False)
    assert ev.from_cache is False
    clusters = ["bio", "geo"]
    assert ev.clusters == clusters
    # one edit row per family x seed x cluster x op
    keys = [(r["family"], r["seed"], r["cluster"], r["op"]) for r in ev.rows]
    want = [(f, None, c, op) for f in ("naica", "na") for c in clusters for op in ("boost", "suppress")]
    want += [("random", s, c, op) for s in (0, 1) for c in clusters for op in ("boost", "suppress")]
    want += [("activation", None, c, op) for c in clusters for op in ("boost", "suppress")]
    want += [("random-act", s, c, op) for s in (0, 1) for c in clusters for op in ("boost", "suppress")]
    assert keys == want
    # each row's multipliers, by hand from its family's mask: the key sets, plain NA, and the
    # count-matched random draws the artifact saved (their counts per layer are the key sets')
    t = ev.tensors_
    random_masks = t["random_masks"]
    assert random_masks.shape == (2, len(clusters), *space.shape)
    rows = [r for r in ev.rows if r["family"] in ("naica", "na", "random")]
    mults = []
    for row in rows:
        c = clusters.index(row["cluster"])
        mask = (random_masks[row["seed"], c] if row["family"] == "random"
                else {"naica": sets, "na": na_sets}[row["family"]].mask(row["cluster"]))
        if row["family"] == "random":
            assert mask.sum(1).tolist() == sets.mask(row["cluster"]).sum(1).tolist()
            assert not torch.equal(mask, sets.mask(row["cluster"]))  # a draw, not the key set itself
        mults.append(torch.where(mask, 2.0 if row["op"] == "boost" else 0.0, 1.0))
    assert rows == ev.rows[:len(rows)]  # the activation baselines follow (tests/test_keyneuron_eval.py)
    for c in range(len(clusters)):
        assert not torch.equal(random_masks[0, c], random_masks[1, c])  # the draws differ

    prompts = [(qi, p) for qi, q in enumerate(QUESTIONS) for p in prompts_for(q)[:2]]
    P, R = len(prompts), len(rows)
    assert t["probs"].shape == t["correct"].shape == (P, len(ev.rows))
    assert t["prompt_question"].tolist() == [qi for qi, _ in prompts]
    assert t["prompt_cluster"].tolist() == [clusters.index(QUESTIONS[qi].cluster) for qi, _ in prompts]
    # the unmodified probability and correctness of every prompt: an independent forward
    for i, (_, p) in enumerate(prompts):
        letters = [tok.convert_tokens_to_ids(x) for x in p.letters]
        probs = _full_probs(model, space, prompt_ids(tok, p.text))
        assert float(t["base_prob"][i]) == pytest.approx(float(probs[letters[p.correct]]), rel=1e-5)
        assert bool(t["base_correct"][i]) == (int(probs[letters].argmax()) == p.correct)
        if i == 0:  # every edit row of the first prompt
            for r in range(R):
                edited = _full_probs(model, space, prompt_ids(tok, p.text), mults[r])
                assert float(t["probs"][0, r]) == pytest.approx(float(edited[letters[p.correct]]), rel=1e-5)

    # PCR rows: every cluster x op x family (x seed); related / unrelated disjoint question sets
    per_cluster = ev.summary["per_cluster"]
    assert [(r["family"], r["seed"], r["cluster"], r["op"]) for r in per_cluster] == want
    pc, pq = t["prompt_cluster"], t["prompt_question"]
    p0 = t["base_prob"]
    sample = t["unrelated_questions"]  # [clusters, questions]: each cluster's control sample, as saved
    for r, row in enumerate(per_cluster):
        c = clusters.index(row["cluster"])
        rel = (pc == c).nonzero().flatten()
        unrel = torch.tensor([i for i, q in enumerate(pq.tolist()) if bool(sample[c, q])])
        rel_q, unrel_q = set(pq[rel].tolist()), set(pq[unrel].tolist())
        assert rel_q and unrel_q and not rel_q & unrel_q
        assert all(QUESTIONS[q].cluster != row["cluster"] for q in unrel_q)
        assert len(unrel_q) == 3 and row["unrelated_prompts"] == len(unrel) == 6  # every template of each
        assert row["related_prompts"] == len(rel) == 6
        change = 100.0 * (t["probs"][:, r] - p0) / p0
        assert row["related_change"] == pytest.approx(float(change[rel].mean()), rel=1e-5)
        assert row["unrelated_change"] == pytest.approx(float(change[unrel].mean()), rel=1e-5)
        assert row["pcr"] == pytest.approx(abs(row["related_change"]) / abs(row["unrelated_change"]), rel=1e-6)
        ok0, ok = t["base_correct"][rel].bool(), t["correct"][rel, r].bool()
        flips = (~ok0 & ok) if row["op"] == "boost" else (ok0 & ~ok)
        assert row["edit_success"] == pytest.approx(float(flips.float().mean()))
    for op in ("boost", "suppress"):  # the edit-success checks above could tell a wrong definition
        assert any(r["edit_success"] > 0 for r in per_cluster if r["op"] == op), op
    fams = {(r["family"], r["op"]): r for r in ev.summary["families"]}
    assert set(fams) == {(f, op) for f in ("naica", "na", "activation", "random", "random-act")
                         for op in ("boost", "suppress")}
    assert fams[("random", "boost")]["draws"] == 2
    boost_naica = [r["pcr"] for r in per_cluster if r["family"] == "naica" and r["op"] == "boost"]
    assert fams[("naica", "boost")]["pcr"]["value"] == pytest.approx(sum(boost_naica) / 2)
    pred = {r["family"]: r for r in ev.summary["prediction"]}
    assert set(pred) == {"naica", "na", "activation", "random (seed 0)", "random (seed 1)", "random-act (seed 0)",
                         "random-act (seed 1)"}
    assert all(r["chance"] == 0.5 and r["prompts"] == P for r in pred.values())
    # cluster prediction by hand: each prompt's last-position activations from a full forward,
    # standardised over the prompts, the cluster whose key neurons score highest on average;
    # the Wilson interval with n = questions from its formula
    acts = np.stack([_last_acts(model, space, prompt_ids(tok, p.text)).flatten().double().numpy() for _, p in prompts])
    z = (acts - acts.mean(0)) / np.maximum(acts.std(0, ddof=1), 1e-6)
    truth = np.array([clusters.index(QUESTIONS[qi].cluster) for qi, _ in prompts])
    for name, family_sets in (("naica", sets), ("na", na_sets)):
        score = np.stack([z[:, family_sets.mask(c).flatten().numpy()].mean(1) for c in clusters], axis=1)
        acc = float((score.argmax(1) == truth).mean())
        n = len(QUESTIONS)
        centre = (acc + 1.96**2 / (2 * n)) / (1 + 1.96**2 / n)
        half = 1.96 * math.sqrt(acc * (1 - acc) / n + 1.96**2 / (4 * n * n)) / (1 + 1.96**2 / n)
        got = pred[name]["accuracy"]
        assert got["value"] == pytest.approx(acc), name
        assert (got["low"], got["high"]) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-3)
    assert len({pred[n]["accuracy"]["value"] for n in pred}) > 1  # the rule tells the sets apart

    again = evaluate_key_neurons(model, tok, sets, QUESTIONS, config, na_sets=na_sets, out=tmp_path / "ev",
                                 progress=False)
    assert again.from_cache is True and torch.equal(again.tensors_["probs"], t["probs"])


# --------------------------------------------------------------------------------------------
# 6. Bad inputs (library)


def test_attribute_refuses_duplicate_uids():
    model, tok = tiny_model("llama"), ext_tokenizer()
    twice = [QUESTIONS[0], Question("bio/0", "another?", ("a", "b"), 0, "bio", "en")]
    with pytest.raises(LapeError) as err:
        attribute(model, tok, twice, progress=False)
    assert "bio/0" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LapeError):
        attribute(model, tok, [], progress=False)


def test_evaluate_refuses_a_cluster_without_key_neurons():
    model, tok = tiny_model("llama"), ext_tokenizer()
    space = NeuronSpace.of(model)
    sets = _sets(space, {"bio": {0: [1]}})
    with pytest.raises(LapeError) as err:
        evaluate_key_neurons(model, tok, sets, QUESTIONS, KeyEvalConfig(random_seeds=0, templates=1),
                             progress=False)
    assert "geo" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LapeError):
        evaluate_key_neurons(model, tok, sets, [], progress=False)


# --------------------------------------------------------------------------------------------
# 6-7. The CLI on a tiny model folder: one process, two gloo ranks, select, eval

# bio: 6 questions (eval share 0.5: 3 for selection; two ranks get 2 and 1), geo: 4 (2 + 2)
CLI_QUESTIONS = [
    ("what carries oxygen in blood?", ["hemoglobin", "insulin", "keratin"], 0),
    ("where is dna kept in a cell?", ["wall", "nucleus", "membrane", "vacuole"], 1),
    ("what do plants make in light?", ["salt", "iron", "sugar"], 2),
    ("which organ pumps blood?", ["heart", "lung", "liver"], 0),
    ("what are proteins made of?", ["amino acids", "fats", "salts"], 0),
    ("which cells fight infection?", ["red cells", "white cells", "platelets"], 1),
]
CLI_GEO = [
    ("which is the longest river?", ["nile", "thames", "seine"], 0),
    ("which ocean is the largest?", ["arctic", "indian", "pacific", "atlantic"], 2),
    ("what is the capital of peru?", ["quito", "lima"], 1),
    ("which desert is the largest hot desert?", ["gobi", "sahara", "kalahari"], 1),
]
ATTRIBUTE = ["--steps", "4", "--templates", "2", "--batch-size", "7", "--eval-share", "0.5"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _write_questions(work: Path) -> None:
    lines = [json.dumps({"uid": f"bio/{i}", "question": q, "choices": c, "answer": a, "cluster": "bio",
                         "language": "en"}) for i, (q, c, a) in enumerate(CLI_QUESTIONS)]
    lines += [json.dumps({"uid": f"geo/{i}", "question": q, "choices": c, "answer": a, "cluster": "geo"})
              for i, (q, c, a) in enumerate(CLI_GEO)]
    (work / "questions.jsonl").write_text("\n".join(lines) + "\n")
    (work / "questions.yaml").write_text("name: tiny-mcqa\nsources:\n"
                                         "  - {kind: mcqa, path: questions.jsonl, language: en}\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny LLaMA folder (with :func:`ext_tokenizer`), a question manifest, and the attribution
    of one process (``one``, in this process) and of two gloo ranks (``two``, torchrun)."""
    work = tmp_path_factory.mktemp("keyneurons")
    tiny_model("llama").save_pretrained(work / "model")
    ext_tokenizer().save_pretrained(work / "model")
    _write_questions(work)
    common = ["keyneurons", "attribute", "--model", str(work / "model"), "--questions", str(work / "questions.yaml"),
              *ATTRIBUTE]
    assert main(["-q", *common, "--out", str(work / "one")]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    args = [*launcher, "--standalone", "--nproc-per-node", "2", "-m", "lape", "-q", *common,
            "--out", str(work / "two")]
    proc = subprocess.run(args, cwd=work, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return work


def test_two_ranks_give_the_same_attribution_as_one_process(work):
    """Catches: questions lost or counted twice when sharded over ranks, rows written at the wrong
    question index, a rank's rows missing from the all-reduce, the artifact saved by a rank
    that does not hold the sums."""
    one, two = KeyNeuronScores.load(work / "one"), KeyNeuronScores.load(work / "two")
    assert one.clusters == two.clusters == ["bio", "geo"]
    assert one.uids == two.uids
    assert len(one.uids["bio"]) == 3 and len(one.uids["geo"]) == 2
    assert one.meta["world_size"] == 1 and two.meta["world_size"] == 2
    for c in one.clusters:
        for name in ("kept", "total", "prob", "raw", "correct", "gap", "delta"):
            a, b = one.get(c, name), two.get(c, name)
            assert a.shape == b.shape, (c, name)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * (float(a.abs().max()) or 1.0))
        # every question has scores and a probability for both templates
        assert bool((one.get(c, "prob") > 0).all())
        assert bool((one.get(c, "total") != 0).all())
        assert bool((one.get(c, "kept").flatten(1).amax(1) > 0).all())
    # the ranks each check-pointed their own shard
    parts = sorted(p.name for p in (work / "two" / "partial").iterdir())
    assert parts == ["bio.rank0", "bio.rank1", "geo.rank0", "geo.rank1"]


def test_cli_attribution_equals_the_library_prompt_by_prompt(work):
    """Every saved row: the probabilities, the above-threshold sums and the raw sums equal
    :func:`attribute_prompt` run here on the same prompts (threshold and sums by hand).
    Catches rows written at the wrong question index, a wrong threshold, a wrong answer token."""
    from lape import load_model

    model, tok = load_model(str(work / "model"))
    space = NeuronSpace.of(model)
    one = KeyNeuronScores.load(work / "one")
    source = {"bio": CLI_QUESTIONS, "geo": CLI_GEO}
    for c in one.clusters:
        raw = torch.zeros(space.shape)
        for row, uid in enumerate(one.uids[c]):
            q, choices, answer = source[c][int(uid.split("/")[1])]
            question = Question(uid, q, tuple(choices), answer, c, "en")
            kept, total = torch.zeros(space.shape), 0.0
            for t, p in enumerate(prompts_for(question)[:2]):
                letters = [tok.convert_tokens_to_ids(x) for x in p.letters]
                res = attribute_prompt(model, space, prompt_ids(tok, p.text), letters[p.correct], steps=4)
                assert float(one.get(c, "prob")[row, t]) == pytest.approx(res.prob, rel=1e-5)
                probs = _full_probs(model, space, prompt_ids(tok, p.text))
                correct = float(int(probs[letters].argmax()) == p.correct)
                assert float(one.get(c, "correct")[row, t]) == correct
                _close(one.get(c, "gap")[row, t], res.prob - res.prob_base)
                top = float(res.scores.max())
                kept += torch.where(res.scores > 0.2 * top, res.scores, torch.zeros(()))
                total += float(res.scores.sum())
                raw += res.scores
            _close(one.get(c, "kept")[row], kept)
            assert float(one.get(c, "total")[row]) == pytest.approx(total, rel=1e-4, abs=1e-7)
        _close(one.get(c, "raw"), raw)


def test_cli_select_writes_the_sets_and_the_plots(work):
    """``lape keyneurons select``: the library's sets, and the plots (the accumulated heatmap once
    failed with a layout-engine RuntimeError after the sets were saved)."""
    out = work / "neurons-cli"
    assert main(["-q", "keyneurons", "select", str(work / "one"), "--out", str(out), "--top-v", "5"]) == 0
    sets = NeuronSets.load(out)
    want, _ = select(KeyNeuronScores.load(work / "one"), SelectConfig(top_v=5))
    assert torch.equal(sets.masks, want.masks)
    assert (work / "neurons-cli-plots").is_dir() and any((work / "neurons-cli-plots").iterdir())


def test_cli_eval_and_the_refused_overlap(work, capsys):
    """eval runs on the selection made from the one-process attribution (the library select,
    as ``lape keyneurons select`` does before its plots); eval with another --eval-share (so
    that evaluation questions were used for the selection) is refused in one line, before the
    model loads."""
    from lape.keyneurons.evaluate import KeyNeuronEval
    from lape.keyneurons.questions import load_questions, split_questions

    neurons, ev_out = work / "neurons", work / "eval"
    sets, maps = select(KeyNeuronScores.load(work / "one"), SelectConfig(top_v=5), out=neurons)
    assert sets.labels == ["bio", "geo"] and sets.meta["fingerprint"]
    selection, evaluation = split_questions(load_questions(work / "questions.yaml"), 0.5)
    assert set(maps.uids) == {q.uid for q in selection}
    model_args = ["--model", str(work / "model"), "--questions", str(work / "questions.yaml")]
    eval_args = ["--templates", "2", "--random-seeds", "1", "--batch-size", "5"]
    assert main(["-q", "keyneurons", "eval", str(neurons), *model_args, "--out", str(ev_out), "--scores",
                 str(work / "one"), "--eval-share", "0.5", *eval_args]) == 0
    ev = KeyNeuronEval.load(ev_out)
    assert ev.meta["questions"] == len(evaluation) == 5 and ev.meta["prompts"] == 10
    assert {r["family"] for r in ev.rows} == {"naica", "na", "random", "activation", "random-act"}
    assert ev.meta["activation_source"] == "selection questions"  # the selection half's activations
    # the plain-NA baseline is the same selection (top_v 5) without ICA and common-neuron removal
    na, _ = select(KeyNeuronScores.load(work / "one"), SelectConfig(top_v=5, ica=False, exclude_common=False))
    assert ev.meta["set_sizes"]["na"] == na.counts() != \
        select(KeyNeuronScores.load(work / "one"), SelectConfig(ica=False, exclude_common=False))[0].counts()
    # a new interpreter loads each of the three key-neuron kinds (they were missing from the registry)
    from test_registry import fresh_kinds

    maps_dir = work / "maps-only"
    maps.save(maps_dir)
    assert fresh_kinds([work / "one", maps_dir, ev_out]) == [
        "keyneuron_scores KeyNeuronScores", "keyneuron_maps KeyNeuronMaps", "keyneuron_eval KeyNeuronEval"]
    capsys.readouterr()
    rc = main(["-q", "keyneurons", "eval", str(neurons), "--model", str(work / "no-such-model"),
               "--questions", str(work / "questions.yaml"), "--out", str(work / "eval-bad"),
               "--eval-share", "0.75", *eval_args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("lape: error: ") and err.count("\n") == 1 and "were used to select" in err, err
    assert not (work / "eval-bad").exists() or not any((work / "eval-bad").iterdir())


def test_cli_attribute_uses_the_manifest_templates(work):
    """A question manifest's ``templates:`` file renders the prompts (not just the load check): a
    language only that file has is attributed, with the manifest's template text."""
    (work / "xx").mkdir()
    (work / "xx" / "templates.json").write_text(json.dumps(
        {"xx": {"templates": [{"name": "only", "text": "Q {question}\n{options}\nA:"}]}}))
    (work / "xx" / "questions.jsonl").write_text("\n".join(json.dumps(
        {"uid": f"xx/{i}", "question": q, "choices": c, "answer": a, "cluster": "xx", "language": "xx"})
        for i, (q, c, a) in enumerate(CLI_GEO)) + "\n")
    (work / "xx" / "questions.yaml").write_text("name: xx\ntemplates: templates.json\n"
                                                "sources:\n  - {kind: mcqa, path: questions.jsonl}\n")
    from lape.keyneurons.questions import load_questions

    assert len(load_questions(work / "xx" / "questions.yaml")) == 4  # the manifest's templates pass the load check
    rc = main(["-q", "keyneurons", "attribute", "--model", str(work / "model"), "--questions",
               str(work / "xx" / "questions.yaml"), "--out", str(work / "xx" / "scores"), "--steps", "1",
               "--templates", "1"])
    assert rc == 0
    scores = KeyNeuronScores.load(work / "xx" / "scores")
    assert scores.clusters == ["xx"] and scores.meta["prompts"] == 2  # the selection half: 2 of 4
    from lape import load_model
    from lape.keyneurons.prompts import Template, render

    model, tok = load_model(str(work / "model"))
    uid = scores.uids["xx"][0]
    q, choices, answer = CLI_GEO[int(uid.split("/")[1])]
    question = Question(uid, q, tuple(choices), answer, "xx", "xx")
    prompt = render(question, Template("xx", "only", "Q {question}\n{options}\nA:"), range(len(choices)))
    assert prompt.text.startswith("Q ") and prompt.text.endswith("\nA:")
    letter = tok.convert_tokens_to_ids(prompt.letters[prompt.correct])
    res = attribute_prompt(model, NeuronSpace.of(model), prompt_ids(tok, prompt.text), letter, steps=1)
    assert float(scores.get("xx", "prob")[0, 0]) == pytest.approx(res.prob, rel=1e-5)


def test_the_plain_na_baseline_of_sets_another_method_made_is_a_one_line_error():
    from lape.keyneurons.select import plain_na_config

    lape_sets = NeuronSets.from_neurons({"fr": [(0, 1)]}, (2, 8), {"config": {"top_rate": 0.01, "filter_rate": 0.95}})
    with pytest.raises(LapeError, match="not made by key-neuron selection"):
        plain_na_config(lape_sets)
    made = NeuronSets.from_neurons({"bio": [(0, 1)]}, (2, 8), {"config": SelectConfig(top_v=7).to_dict()})
    assert plain_na_config(made) == SelectConfig(top_v=7, ica=False, exclude_common=False)
