"""Frozen further pre-training: frozen entries bit-exact (a region and the magnitude-matched
control), the magnitude mask against an independent topk, the model restored (also after an
interrupt), the loss curve against an independent AdamW loop on Hugging Face's own loss, NLL
before/after, seeds and the bootstrap intervals, the verdict sentence, the cache, bad inputs, the
artifact and the figure."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny_models import Seq, random_sequences, tiny_model

from lape import artifacts
from lape.errors import LapeError
from lape.evaluate.perplexity import PerplexityConfig, corpus_nll
from lape.intervals import bootstrap
from lape.masks import ParamRegions
from lape.plots.regions import forgetting_figure
from lape.regions.forgetting import AGREES, DAMAGE, RegionTrain
from lape.regions.train import (
    TrainConfig,
    learning_rate,
    magnitude_masks,
    region_train,
    training_batches,
)
from lape.space import ParamSpace

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(family: str = "llama") -> torch.nn.Module:
    model = tiny_model(family)
    model.requires_grad_(False)  # as lape.load_model leaves it
    return model


def _regions(model, rate: float = 0.2, seed: int = 0) -> ParamRegions:
    """Hand-made "core" and "random" regions over every decoder-block tensor, norms included."""
    g = torch.Generator().manual_seed(seed)
    space = ParamSpace.of(model)
    masks = {n: torch.rand(2, *space.info(n).shape, generator=g) < rate for n in space.names()}
    return ParamRegions(["core", "random"], masks)


def _corpora(n_train: int = 4, length: int = 10):
    train = {"aa": random_sequences(n_train, length, seed=1, real_last=6)}
    valid = {"aa": random_sequences(2, length, seed=2), "bb": random_sequences(2, length, seed=3, real_last=5)}
    return train, valid


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _count_calls(module):
    calls = []
    return calls, module.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)


# --------------------------------------------------------------------------------------------
# freezing and restoring


def _frozen_entries_stay(model, regions, setting: str, frozen: dict[str, torch.Tensor]):
    """Train under ``setting`` (weight decay on: only after_step keeps frozen entries in place)
    and check every forward pass after the first step: the frozen entries are the original ones,
    the rest of their tensors moved, embeddings never did; the model is restored at the end."""
    space = ParamSpace.of(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []  # the weights at every forward pass: training steps and the evaluation after them
    handle = model.base_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append({n: p.detach().clone() for n, p in model.named_parameters()}),
        with_kwargs=True)
    config = TrainConfig(train_language="aa", freeze=(setting,), steps=4, batch_size=2, lr=0.05, weight_decay=0.1,
                         warmup_steps=1, seeds=(0,))
    train, valid = _corpora()
    try:
        res = region_train(model, train, valid, regions, config, progress=False)
    finally:
        handle.remove()

    assert set(frozen) == set(space.names(norms=False))  # every trained non-norm tensor, no norm
    assert res.frozen_params == [sum(int(m.sum()) for m in frozen.values())] and res.frozen_params[0] > 0
    trained = [w for w in seen if not torch.equal(w["model.layers.0.mlp.up_proj.weight"],
                                                  original["model.layers.0.mlp.up_proj.weight"])]
    assert len(trained) >= 4  # 3 training steps after the first, then the evaluation
    for weights in trained:
        for n, m in frozen.items():
            assert torch.equal(weights[n][m], original[n][m]), n
        assert torch.equal(weights["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    last = trained[-1]
    for n, m in frozen.items():  # the other entries of the same tensors did train
        assert not torch.equal(last[n][~m], original[n][~m]), n
    norm = [n for n in space.names() if space.info(n).is_norm]
    assert norm and all(not torch.equal(last[n], original[n]) for n in norm)  # norms train, never frozen
    assert _same({n: p for n, p in model.named_parameters()}, original)


def test_frozen_region_entries_stay_bit_identical_while_the_rest_of_their_tensors_train():
    model = _model()
    regions = _regions(model)
    core = regions.mask("core")
    _frozen_entries_stay(model, regions, "core", {n: core[n] for n in ParamSpace.of(model).names(norms=False)})


def _top_abs(theta: torch.Tensor, k: int) -> torch.Tensor:
    """Independently of magnitude_masks: torch.topk of |theta| over the flattened tensor."""
    mask = torch.zeros(theta.numel(), dtype=torch.bool)
    mask[torch.topk(theta.reshape(-1).abs(), k).indices] = True
    return mask.reshape(theta.shape)


def test_magnitude_mask_is_each_tensors_top_abs_theta_with_the_cores_count():
    model = _model()
    space = ParamSpace.of(model)
    named = dict(model.named_parameters())
    regions = _regions(model)  # a "core" of ~20% per tensor: its count, not 1%, sets k
    core = regions.mask("core")
    got = magnitude_masks(model, regions)
    assert set(got) == set(space.names(norms=False)) and not any(space.info(n).is_norm for n in got)
    for n, m in got.items():
        k = int(core[n].sum())
        assert m.shape == named[n].shape and int(m.sum()) == k > 0
        assert torch.equal(m, _top_abs(named[n].detach(), k)), n
        assert named[n].detach()[m].abs().min() >= named[n].detach()[~m].abs().max()
    plain = magnitude_masks(model)  # no core region: the paper's 1% of each tensor, at least one entry
    for n, m in plain.items():
        k = max(1, named[n].numel() // 100)
        assert int(m.sum()) == k and torch.equal(m, _top_abs(named[n].detach(), k)), n
    with_rate = {n for n, m in plain.items() if named[n].numel() >= 100}
    assert with_rate  # some tensors of the tiny model are big enough for 1% to be more than one entry
    assert any(int(plain[n].sum()) > 1 for n in with_rate)


def test_magnitude_control_entries_stay_bit_identical_while_the_rest_of_their_tensors_train():
    model = _model()
    regions = _regions(model)
    want = magnitude_masks(model, regions)  # of the original weights
    _frozen_entries_stay(model, regions, "magnitude", want)


def test_magnitude_needs_no_regions_and_counts_one_percent():
    model = _model()
    train, valid = _corpora()
    config = TrainConfig(train_language="aa", freeze=("magnitude",), steps=1, batch_size=2, seeds=(0,))
    res = region_train(model, train, valid, None, config, progress=False)
    assert res.frozen_params == [sum(int(m.sum()) for m in magnitude_masks(model).values())]
    assert res.meta["magnitude_size"].startswith("max(1, floor(0.01")


def test_model_is_restored_with_flags_grads_and_mode():
    model = _model()
    model.train()
    named = dict(model.named_parameters())
    up = named["model.layers.0.mlp.up_proj.weight"]
    up.requires_grad_(True)
    marker = torch.full_like(up, 7.0)
    up.grad = marker
    flags = {n: p.requires_grad for n, p in named.items()}
    before = _state(model)
    train, valid = _corpora()
    config = TrainConfig(train_language="aa", freeze=("none", "core"), steps=3, batch_size=2, lr=0.02, seeds=(0,))
    res = region_train(model, train, valid, _regions(model), config, progress=False)

    assert _same(_state(model), before)  # bit-identical
    assert {n: p.requires_grad for n, p in named.items()} == flags
    assert up.grad is marker and all(p.grad is None for n, p in named.items() if p is not up)
    assert model.training
    assert res.settings == ["none", "core"] and res.frozen_params[0] == 0 < res.frozen_params[1]
    for row in res.after_nll:  # each setting did train
        assert all(a != b for a, b in zip(row, res.before_nll))
    assert len(res.losses) == 2 and all(len(row) == 3 for row in res.losses)


def test_an_interrupt_mid_training_leaves_the_model_as_it_was():
    model = _model()
    before = _state(model)
    params = dict(model.named_parameters())
    changed = []

    def hook(module, args, kwargs):  # Ctrl-C in the second setting's training, weights moved
        if any(not torch.equal(params[k], before[k]) for k in params):
            changed.append(1)
            if len(changed) == 8:
                raise KeyboardInterrupt

    handle = model.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    train, valid = _corpora()
    config = TrainConfig(train_language="aa", freeze=("none", "core"), steps=3, batch_size=2, lr=0.02, seeds=(0,))
    try:
        with pytest.raises(KeyboardInterrupt):
            region_train(model, train, valid, _regions(model), config, progress=False)
    finally:
        handle.remove()
    assert len(changed) == 8
    assert _same(_state(model), before)
    assert not any(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# what training does


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_training_lowers_the_trained_languages_nll(family):
    model = _model(family)
    text = random_sequences(2, 12, seed=5)
    train = {"aa": text}  # two sequences, cycled: the model learns them by heart
    valid = {"aa": text, "bb": random_sequences(2, 12, seed=6)}
    config = TrainConfig(train_language="aa", freeze=("none",), steps=6, batch_size=2, lr=0.01, warmup_steps=1,
                         seeds=(0,))
    res = region_train(model, train, valid, None, config, progress=False)
    before, after = dict(zip(res.languages, res.before_nll)), dict(zip(res.languages, res.after_nll[0]))
    assert after["aa"] < before["aa"] - 0.2
    assert after["bb"] != before["bb"]
    assert res.losses[0][-1] < res.losses[0][0]
    row = res.forgetting_rows()[0]
    assert row["trained_delta_nll"] == pytest.approx(after["aa"] - before["aa"])
    assert row["others_mean_delta_nll"] == pytest.approx(after["bb"] - before["bb"])
    assert row["trained_high"] < 0 and row["trained_nll_fell"] is True and res.trained_nll_fell()


def _schedule(lr: float, steps: int, warmup: int, s: int) -> float:
    """Written out again, independently of lape.regions.train.learning_rate."""
    if s < warmup:
        return lr * (s + 1) / (warmup + 1)
    return lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_loss_curve_and_before_nll_match_an_independent_loop(family):
    """Every step's batch holds all three training sequences (one padded), so the mean loss does
    not depend on their order: a plain AdamW loop on ``model(..., labels=).loss`` must give the
    same losses, and the "before" NLL is corpus_nll of the untouched model."""
    model = _model(family)
    seqs = random_sequences(3, 9, seed=7, real_last=5)
    valid = {"aa": random_sequences(2, 9, seed=8), "bb": random_sequences(3, 9, seed=9, real_last=4)}
    config = TrainConfig(train_language="aa", freeze=("none",), steps=4, batch_size=3, lr=0.01,
                         weight_decay=0.1, warmup_steps=1, grad_clip=0.5, chunk_size=5, seeds=(0,))
    want_before = {lang: corpus_nll(model, s, PerplexityConfig(batch_size=3, chunk_size=5)) for lang, s in valid.items()}
    res = region_train(model, {"aa": seqs}, valid, None, config, progress=False)

    assert res.before_nll == pytest.approx([want_before[lang][0] for lang in res.languages], rel=1e-6)
    assert res.tokens == {lang: want_before[lang][1] for lang in valid}
    assert [int(n) for n in res.window_tokens["bb"]] == [8, 8, 3]  # one entry per held-out window

    ref = copy.deepcopy(model)
    names = ParamSpace.of(ref).names()
    named = dict(ref.named_parameters())
    params = [named[n] for n in names]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.stack([s.input_ids for s in seqs])
    mask = torch.stack([s.attention_mask for s in seqs])
    losses = []
    for step in range(config.steps):
        loss = ref(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        for group in opt.param_groups:
            group["lr"] = _schedule(0.01, 4, 1, step)
        opt.step()
        opt.zero_grad()
    assert res.losses[0] == pytest.approx(losses, rel=1e-5)  # measured: 1e-7
    assert losses[-1] < losses[0] - 0.05  # the comparison covers real updates
    with torch.no_grad():
        want_after = {lang: corpus_nll(ref, s, PerplexityConfig(batch_size=3))[0] for lang, s in valid.items()}
    assert res.after_nll[0] == pytest.approx([want_after[lang] for lang in res.languages], rel=1e-5)


def test_seeds_give_different_runs_and_the_intervals_are_bootstraps_over_windows():
    model = _model()
    train = {"aa": random_sequences(6, 10, seed=1)}
    valid = {"aa": random_sequences(3, 10, seed=2), "bb": random_sequences(3, 10, seed=3),
             "cc": random_sequences(2, 10, seed=4)}
    config = TrainConfig(train_language="aa", freeze=("none",), steps=3, batch_size=2, lr=0.02, warmup_steps=1,
                         seeds=(0, 1))
    res = region_train(model, train, valid, None, config, progress=False)
    assert res.seeds == [0, 1] and res.seed_losses.shape == (1, 2, 3)
    assert not torch.equal(res.seed_losses[0, 0], res.seed_losses[0, 1])  # other batches, other runs
    assert not torch.equal(res.after["bb"][0, 0], res.after["bb"][0, 1])
    # seed 1 alone is the same run: every run starts from the original weights
    alone = region_train(model, train, valid, None, config.replace(seeds=(1,)), progress=False)
    assert alone.seed_losses[0, 0].tolist() == pytest.approx(res.seed_losses[0, 1].tolist(), rel=1e-9)
    assert alone.after["bb"][0, 0].tolist() == pytest.approx(res.after["bb"][0, 1].tolist(), rel=1e-9)

    # the point value: mean over seeds of each seed's token-weighted change, pooled over bb and cc
    tokens = sum(int(s.attention_mask[1:].sum()) for lang in ("bb", "cc") for s in valid[lang])
    before = sum(float(res.before[lang].sum()) for lang in ("bb", "cc"))
    per_seed = [(sum(float(res.after[lang][0, k].sum()) for lang in ("bb", "cc")) - before) / tokens for k in (0, 1)]
    iv = res.change("none", ["bb", "cc"])
    assert res.seed_changes("none", ["bb", "cc"]) == pytest.approx(per_seed)
    assert iv.value == pytest.approx(sum(per_seed) / 2)
    # the interval: lape.intervals.bootstrap over the 5 windows, each carrying both seeds' changes
    rows = np.array([[int(res.window_tokens[lang][w]), *(float(res.after[lang][0, k, w] - res.before[lang][w])
                                                         for k in (0, 1))]
                     for lang in ("bb", "cc") for w in range(len(valid[lang]))])
    want = bootstrap(rows, lambda r: r[:, 1:].sum() / 2 / r[:, 0].sum(), resamples=2000, seed=0)
    assert (iv.low, iv.high) == pytest.approx((want.low, want.high), rel=1e-12)
    assert iv.low < iv.value < iv.high
    row = res.forgetting_rows()[0]
    assert (row["others_mean_delta_nll"], row["others_low"], row["others_high"]) == pytest.approx(
        (iv.value, iv.low, iv.high))


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(train_language="aa", steps=6, warmup_steps=2, lr=0.3)
    lrs = [learning_rate(config, s) for s in range(6)]
    assert lrs == pytest.approx([_schedule(0.3, 6, 2, s) for s in range(6)])
    assert lrs[0] > 0 and lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.3) and lrs[2] > lrs[3] > lrs[5] > 0


def test_training_batches_cycle_a_short_stream_in_seeded_order():
    seqs = [Seq(torch.full((4,), 10 + i), torch.ones(4, dtype=torch.long)) for i in range(3)]
    config = TrainConfig(train_language="aa", steps=4, batch_size=2)
    got = training_batches(seqs, config, seed=3)
    assert len(got) == 4 and all(ids.shape == (2, 4) for ids, _ in got)
    order = [int(ids[i, 0]) - 10 for ids, _ in got for i in range(2)]
    assert sorted(order[:3]) == [0, 1, 2] and sorted(order[3:6]) == [0, 1, 2]  # each pass a permutation
    again = training_batches(seqs, config, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again))
    others = [[int(ids[i, 0]) for ids, _ in training_batches(seqs, config, seed=s) for i in range(2)]
              for s in range(4, 10)]
    assert any(o != [x + 10 for x in order] for o in others)
    long = [Seq(torch.full((4,), i), torch.ones(4, dtype=torch.long)) for i in range(20)]
    used = {int(ids[i, 0]) for ids, _ in training_batches(long, config, seed=3) for i in range(2)}
    assert used == set(range(8))  # only the first steps x batch_size sequences


# --------------------------------------------------------------------------------------------
# cache, bad inputs


def test_second_call_is_cached_and_a_changed_setting_recomputes(tmp_path):
    model = _model()
    regions = _regions(model)
    train, valid = _corpora()
    config = TrainConfig(train_language="aa", freeze=("none", "random"), steps=2, batch_size=2, lr=0.02, seeds=(0,))
    out = tmp_path / "forgetting"
    first = region_train(model, train, valid, regions, config, out=out, progress=False)
    assert first.from_cache is False
    assert (out / "delta_nll.csv").is_file() and (out / "losses.csv").is_file() and (out / "intervals.csv").is_file()
    calls, handle = _count_calls(model.base_model)
    try:
        again = region_train(model, train, valid, regions, config.replace(chunk_size=3), out=out,
                                      progress=False)
        assert again.from_cache is True and not calls
        assert again.after_nll == first.after_nll and again.losses == first.losses
        loaded = RegionTrain.load(out, model=model)
        assert loaded.payload() == first.payload()
        more = region_train(model, train, valid, regions, config.replace(steps=3), out=out, progress=False)
        assert more.from_cache is False and calls and len(more.losses[0]) == 3
        calls.clear()
        seeded = region_train(model, train, valid, regions, config.replace(steps=3, seeds=(0, 1)), out=out,
                                       progress=False)
        assert seeded.from_cache is False and calls and seeded.seeds == [0, 1]
    finally:
        handle.remove()


def test_bad_inputs_are_refused_before_any_training():
    model = _model()
    regions = _regions(model)
    train, valid = _corpora()
    good = TrainConfig(train_language="aa", steps=1, batch_size=2, seeds=(0,))
    calls, handle = _count_calls(model.base_model)
    try:
        with pytest.raises(LapeError, match="train_language"):
            region_train(model, train, valid, regions, TrainConfig(), progress=False)
        with pytest.raises(LapeError, match="'zz' is not in the train corpus"):
            region_train(model, train, valid, regions, good.replace(train_language="zz"), progress=False)
        with pytest.raises(LapeError, match="'cor' is not a region"):
            region_train(model, train, valid, regions, good.replace(freeze=("none", "cor")), progress=False)
        with pytest.raises(LapeError, match="no regions were given"):
            region_train(model, train, valid, None, good, progress=False)
        with pytest.raises(LapeError, match="at least one language"):
            region_train(model, train, {}, regions, good, progress=False)
        with torch.inference_mode(), pytest.raises(LapeError, match="inference_mode"):
            region_train(model, train, valid, regions, good, progress=False)
    finally:
        handle.remove()
    assert not calls
    for bad in (dict(betas=(0.9,)), dict(betas=(0.9, 1.5)), dict(freeze=("none", "none")), dict(freeze=()),
                dict(lr=0.0), dict(steps=0), dict(seeds=()), dict(seeds=(1, 1)), dict(seeds=(-1,))):
        with pytest.raises(LapeError):
            TrainConfig(**bad)
    assert TrainConfig.from_dict(good.to_dict()) == good
    assert TrainConfig().freeze == ("none", "core", "random", "magnitude") and TrainConfig().seeds == (0, 1, 2)


# --------------------------------------------------------------------------------------------
# the verdict, the artifact and the figure

LANGS = ["aa", "bb", "cc"]
WINDOWS = 4  # per language, 10 tokens each


def _result(trained: dict[str, float] | None = None, others: dict[str, float] | None = None,
            settings: tuple[str, ...] = ("none", "core", "random", "magnitude")) -> RegionTrain:
    """A result built by hand: NLL 3.0 per token before; after each run, a change per token of
    ``trained[setting]`` on aa and ``others[setting]`` on bb and cc, plus a small spread over
    windows (+-0.02) and seeds (+-0.01) so every interval has a width."""
    trained = {"none": -0.2, "core": -0.15, "random": -0.2, "magnitude": -0.2, **(trained or {})}
    others = {"none": 0.3, "core": 0.05, "random": 0.3, "magnitude": 0.25, **(others or {})}
    seeds = [0, 1]
    spread = torch.tensor([-0.02, 0.01, -0.01, 0.02], dtype=torch.float64)  # per window
    tokens = {lang: torch.full((WINDOWS,), 10, dtype=torch.long) for lang in LANGS}
    before = {lang: torch.full((WINDOWS,), 30.0, dtype=torch.float64) for lang in LANGS}
    after = {}
    for lang in LANGS:
        per = trained if lang == "aa" else others
        d = torch.tensor([[per[s] + (k - 0.5) * 0.02 for k in range(2)] for s in settings], dtype=torch.float64)
        after[lang] = 30.0 + 10 * (d[:, :, None] + spread)  # [settings, seeds, windows]
    losses = torch.tensor([[[3.1, 2.5, 2.1]] * 2] * len(settings), dtype=torch.float64)
    return RegionTrain(list(settings), list(LANGS), "aa", seeds, tokens, before, after, losses,
                            [0] + [120] * (len(settings) - 1), {"lr_per_step": [0.1, 0.2, 0.1]})


def test_verdict_agrees_with_the_paper_only_when_the_trained_nll_fell_and_the_core_stands_apart():
    res = _result()
    assert res.trained_nll_fell() and all(res.trained_nll_fell(s) for s in res.settings)
    core, rnd, mag = (res.change(s, ["bb", "cc"]) for s in ("core", "random", "magnitude"))
    assert core.value == pytest.approx(0.05) and core.high < min(rnd.low, mag.low)
    assert AGREES in res.verdict() and DAMAGE not in res.verdict()
    assert res.payload()["trained_nll_fell"] is True and res.payload()["verdict"] == res.verdict()

    # the same forgetting, but aa's own NLL rose under "none": damage, not forgetting
    damaged = _result(trained={"none": 0.05})
    assert not damaged.trained_nll_fell("none") and damaged.trained_nll_fell("core")
    assert not damaged.trained_nll_fell()
    assert DAMAGE in damaged.verdict() and AGREES not in damaged.verdict() and "none" in damaged.verdict()
    assert damaged.payload()["trained_nll_fell"] is False
    rows = {r["setting"]: r for r in damaged.forgetting_rows()}
    assert rows["none"]["trained_nll_fell"] is False and rows["none"]["trained_low"] > 0
    # a mean below 0 is not enough: one seed's own change must not be above it
    mixed = _result(trained={"none": -0.005})
    assert mixed.seed_changes("none", "aa")[1] > 0 and DAMAGE in mixed.verdict()

    # the core's interval overlaps the magnitude-matched control's: no claim either way
    overlap = _result(others={"magnitude": 0.06})
    assert overlap.trained_nll_fell() and AGREES not in overlap.verdict() and DAMAGE not in overlap.verdict()
    assert "no evidence" in overlap.verdict()
    opposite = _result(others={"core": 0.6})
    assert "opposite" in opposite.verdict() and AGREES not in opposite.verdict()
    no_control = _result(settings=("none", "core", "random"))
    assert "without magnitude" in no_control.verdict() and AGREES not in no_control.verdict()
    unseen = _result()
    for d in (unseen.window_tokens, unseen.before, unseen.after):
        del d["aa"]
    unseen.languages = ["bb", "cc"]
    assert not unseen.trained_nll_fell() and DAMAGE in unseen.verdict()


def test_result_tables_summary_round_trip_and_validation(tmp_path):
    res = _result()
    rows = {r["setting"]: r for r in res.tables()["delta_nll"]}
    assert rows["none"]["aa"] == pytest.approx(-0.2) and rows["none"]["trained_delta_nll"] == pytest.approx(-0.2)
    assert rows["none"]["others_mean_delta_nll"] == pytest.approx(0.3) and rows["core"]["frozen_params"] == 120
    assert rows["core"]["others_low"] < 0.05 < rows["core"]["others_high"]
    assert res.before_nll == pytest.approx([3.0] * 3) and res.tokens == {lang: 40 for lang in LANGS}
    assert res.tables()["losses"][1] == {"step": 1, "lr": 0.2, "none": 2.5, "core": 2.5, "random": 2.5,
                                         "magnitude": 2.5}
    by = {(r["setting"], r["language"]): r for r in res.tables()["intervals"]}
    assert by[("core", "others")]["delta_nll"] == pytest.approx(0.05)
    assert (by[("core", "bb")]["seed_0"], by[("core", "bb")]["seed_1"]) == pytest.approx((0.04, 0.06))
    assert "other 2 languages none +0.300 [" in res.summary_line() and "(2 seeds)" in res.summary_line()
    res.save(tmp_path / "f")
    loaded = RegionTrain.load(tmp_path / "f")
    assert loaded.payload() == res.payload() and loaded.verdict() == res.verdict()
    assert isinstance(artifacts.load(tmp_path / "f"), RegionTrain)  # found by the sidecar's kind
    for broken in (dict(after={**res.after, "bb": res.after["bb"][:, :1]}), dict(seed_losses=res.seed_losses[:1]),
                   dict(frozen_params=[0]), dict(before={**res.before, "aa": -res.before["aa"]}),
                   dict(settings=["none", "none", "random", "magnitude"]), dict(seeds=[0, 0])):
        bad = _result()
        for k, v in broken.items():
            setattr(bad, k, v)
        with pytest.raises(LapeError):
            bad.validate()


def test_plot_shows_bars_with_intervals_per_setting_and_language_and_the_loss_curves(tmp_path):
    res = _result()
    fig = forgetting_figure(res)
    bars_ax, loss_ax = fig.axes[:2]
    heights = [b.get_height() for c in bars_ax.containers if hasattr(c, "patches") for b in c.patches]
    assert heights == pytest.approx([v for row in res.delta_nll() for v in row])
    tops = [c for c in bars_ax.containers if getattr(c, "has_yerr", False)]
    assert len(tops) == len(res.settings)
    core_bb = res.change("core", "bb")
    segments = tops[1].lines[2][0].get_segments()  # the core's whiskers, one per language
    assert segments[1][:, 1] == pytest.approx([core_bb.low, core_bb.high])
    assert [t.get_text() for t in bars_ax.get_xticklabels()] == ["aa\n(trained)", "bb", "cc"]
    assert [list(line.get_ydata()) for line in loss_ax.lines] == res.losses


def test_report_section_shows_the_verdict_intervals_and_whether_the_trained_nll_fell(tmp_path):
    import html

    from lape.regions.report import render_forgetting
    from lape.report import ReportContext

    for res, fell in ((_result(), True), (_result(trained={"none": 0.05}), False)):
        folder = res.save(tmp_path / f"forgetting-{fell}")
        page = render_forgetting(folder, ReportContext(run=tmp_path, plots_dir=tmp_path / "plots"))
        assert html.escape(res.verdict()) in page
        assert (AGREES if fell else DAMAGE) in page and (DAMAGE if fell else AGREES) not in page
        core = {r["setting"]: r for r in res.forgetting_rows()}["core"]
        assert f"{core['others_mean_delta_nll']:+.3f} [{core['others_low']:+.3f}, {core['others_high']:+.3f}]" in page
        assert ('<span class="fail">no</span>' in page) is not fell
