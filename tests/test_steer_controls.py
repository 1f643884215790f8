"""Steering edits and their controls (issue #16): additive and replacement edits set exactly the
intended activations and leave each sequence's first token alone when asked; the random control
moves the same edits to random neurons; the controls of an evaluation; fluency figures against an
independent computation; steering profiles round-trip, are refused elsewhere and are what
calibration chose; the REPL's :profile; stability (Jaccard) and disjoint corpus halves."""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pytest
import torch
from test_steering import char_tokenizer
from tiny_models import WIDTH, random_ids, tiny_model

from lape.errors import LapeError
from lape.evaluate.fluency import FluencyReference, fluency_reference, non_letter_share, text_nll
from lape.evaluate.steer_profile import CalibrateConfig, SteeringProfile, calibrate, find_profile
from lape.evaluate.steer_repl import repl
from lape.evaluate.steer_rule import SteeringRule
from lape.evaluate.steering import SteerConfig, Steerer
from lape.fingerprint import fingerprint
from lape.intervene import Edit, batch_edits, build_edits, difference_of_means, intervene, relocate
from lape.masks import NeuronSets, set_agreement
from lape.neurons.stats import ActivationStats

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH_L = WIDTH["llama"]
NEURONS = {"src": [(0, 3), (0, 17), (1, 5), (2, 0), (2, 40)], "tgt": [(0, 4), (1, 5), (1, 6), (2, 11), (2, 12)],
           "other": [(1, 20)]}


def _stats(model, seed: int = 0) -> ActivationStats:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(5, 50, (3, 3, WIDTH_L), generator=g)
    fire_sums = torch.rand(3, 3, WIDTH_L, generator=g, dtype=torch.float64) * counts * 3
    act_sums = fire_sums - torch.rand(3, 3, WIDTH_L, generator=g, dtype=torch.float64) * 20
    return ActivationStats(["src", "tgt", "other"], counts, torch.tensor([60, 70, 80]), act_sums, fire_sums,
                           {"fingerprint": fingerprint(model), "model_id": "tiny-llama"})


def _sets(model) -> NeuronSets:
    return NeuronSets.from_neurons(NEURONS, (3, WIDTH_L), {"fingerprint": fingerprint(model), "method": "lape"})


def _activations(model, ids, mask=None, **kw) -> list[torch.Tensor]:
    """Each layer's MLP activation as the down projection receives it (after any edit)."""
    seen: list[torch.Tensor] = []
    handles = []

    def run():
        for layer in model.model.layers:
            handles.append(layer.mlp.act_fn.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone())))
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        for h in handles:
            h.remove()

    if kw:
        with intervene(model, check_model=False, **kw):
            run()  # hooks registered inside run after intervene's: they see the edited output
    else:
        run()
    return seen


# --------------------------------------------------------------------------------------------
# The edits


@pytest.mark.parametrize("skip_first", [False, True])
def test_additive_and_replacement_edits_set_exactly_the_intended_activations(skip_first):
    model = tiny_model("llama")
    sets, stats = _sets(model), _stats(model)
    ids = random_ids(3, 7)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: row 1's first real token is at position 2, row 2's at 4
    mask[2, :4] = 0
    first = [0, 2, 4]
    diff = difference_of_means(stats, "tgt", ["src", "other"])
    means = stats.mean_activation().double()
    assert torch.allclose(diff.double(), means[1] - (means[0] + means[2]) / 2, atol=1e-6)  # by hand
    firing = stats.mean_firing_activation()[1]
    rules = {"add": dict(add=["tgt"], scale={"src": 0.5}, strength=2.0),
             "replace": dict(activate=["tgt"], deactivate=["src"], strength=1.5)}
    tgt, src = set(NEURONS["tgt"]), set(NEURONS["src"])
    for name, kw in rules.items():
        edited = _activations(model, ids, mask, neurons=sets, stats=stats, skip_first=skip_first, **kw)
        for layer in range(3):
            # the layer's own output before its edit: earlier layers edited alike, this one not
            pre = (_activations(model, ids, mask, neurons=sets, stats=stats, skip_first=skip_first,
                                layers=range(layer), **kw) if layer else _activations(model, ids, mask))[layer]
            want = pre.clone()
            for i in range(WIDTH_L):
                n = (layer, i)
                if name == "add":
                    if n in src:
                        want[..., i] = want[..., i] * 0.5  # the soft deactivation first ...
                    if n in tgt:
                        want[..., i] = want[..., i] + 2.0 * diff[layer, i]  # ... then the direction added
                else:
                    if n in src:
                        want[..., i] = 0.0
                    if n in tgt:
                        want[..., i] = 1.5 * firing[layer, i]
            if skip_first:
                for b, t in enumerate(first):
                    want[b, t] = pre[b, t]  # the first real token untouched, padding edited like any position
            torch.testing.assert_close(edited[layer], want, rtol=0, atol=1e-5)
            assert not torch.equal(edited[layer], pre) or not (tgt | src) & {(layer, i) for i in range(WIDTH_L)}


def test_skip_first_leaves_the_first_real_token_alone_in_generate_too():
    model = tiny_model("llama")
    sets, stats = _sets(model), _stats(model)
    ids = random_ids(2, 5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    calls: list[torch.Tensor] = []

    def record(m, a, out):
        calls.append(out[..., 4].detach().clone())  # neuron (0, 4) of "tgt"

    with intervene(model, sets, activate=["tgt"], stats=stats, strength=1.0, skip_first=True, check_model=False):
        h = model.model.layers[0].mlp.act_fn.register_forward_hook(record)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
        h.remove()
    value = float(stats.mean_firing_activation()[1, 0, 4])
    prefill = calls[0]
    assert prefill.shape == (2, 5)
    plain = _activations(model, ids, mask)[0][..., 4]
    assert prefill[0, 2] == plain[0, 2] and prefill[1, 0] == plain[1, 0]  # each row's first real token
    assert prefill[0, 3] == pytest.approx(value) and prefill[1, 1] == pytest.approx(value)
    for step in calls[1:]:  # decoding steps continue the cache: every new token is edited
        assert step.shape == (2, 1) and torch.allclose(step, torch.full_like(step, value))


def test_random_control_moves_the_same_values_to_random_neurons_per_layer():
    model = tiny_model("llama")
    sets, stats = _sets(model), _stats(model)
    real = build_edits(sets, scale={"src": 0.5}, add=["tgt"], stats=stats, strength=2.0)
    moved = relocate(real, WIDTH_L, torch.Generator().manual_seed(4))
    assert [(e.layer, e.op, e.index.numel()) for e in moved] == [(e.layer, e.op, e.index.numel()) for e in real]
    for e, m in zip(real, moved):
        assert len(set(m.index.tolist())) == m.index.numel()  # distinct neurons
        values = e.value if isinstance(e.value, torch.Tensor) else torch.full((e.index.numel(),), e.value)
        m_values = m.value if isinstance(m.value, torch.Tensor) else torch.full((m.index.numel(),), m.value)
        assert torch.equal(values, m_values)  # the same values, in the same order
    assert any(not torch.equal(e.index.sort().values, m.index.sort().values) for e, m in zip(real, moved))
    # batch_edits: relocate_seed gives that draw for that sequence, the others keep the real set
    batched = batch_edits(sets, [{"add": ["tgt"], "relocate_seed": 4}, {"add": ["tgt"]}], stats=stats)
    real_add = {e.layer: e for e in build_edits(sets, add=["tgt"], stats=stats)}
    rnd_add = {e.layer: e for e in relocate(list(real_add.values()), WIDTH_L, torch.Generator().manual_seed(4))}
    for e in batched:
        assert e.op == "add"
        offsets = torch.zeros(2, WIDTH_L)
        offsets[:, e.index] = e.value.squeeze(1)
        want = torch.zeros(2, WIDTH_L)
        if e.layer in rnd_add:
            want[0, rnd_add[e.layer].index] = rnd_add[e.layer].value
            want[1, real_add[e.layer].index] = real_add[e.layer].value
        torch.testing.assert_close(offsets, want)
        assert Counter(torch.nonzero(offsets[0]).squeeze(1).shape) == Counter(torch.nonzero(offsets[1]).squeeze(1).shape)


# --------------------------------------------------------------------------------------------
# Fluency


def test_fluency_figures_match_an_independent_computation():
    assert non_letter_share("Hello, world!") == pytest.approx(2 / 12)
    assert non_letter_share("<b><i>") == pytest.approx(4 / 6)
    assert non_letter_share("Привет мир") == 0.0 and non_letter_share("  ") == 0.0
    assert non_letter_share("नमस्ते") == 0.0  # combining marks are part of words
    model = tiny_model("llama")
    token_lists = [[5, 9, 17, 30], [44, 2], [7]]
    got = text_nll(model, token_lists, bos_token_id=1, batch_size=2, chunk_size=3)
    for tokens, value in zip(token_lists, got):
        ids = torch.tensor([[1, *tokens]])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        want = -logp[torch.arange(len(tokens)), torch.tensor(tokens)].mean()
        assert value == pytest.approx(float(want), rel=1e-5)
    windows = {"xx": [_seq([1, 5, 9, 17]), _seq([1, 30, 31, 32]), _seq([1, 8, 8, 0], real=3)] * 4}
    ref = fluency_reference(model, windows)
    per_window = text_nll(model, [[5, 9, 17], [30, 31, 32], [8, 8]] * 4, bos_token_id=1)
    assert ref.languages["xx"]["median_nll"] == pytest.approx(statistics.median(per_window), rel=1e-6)
    assert ref.languages["xx"]["windows"] == 12
    ordered = sorted(per_window)
    assert ref.languages["xx"]["p90_nll"] == pytest.approx(ordered[round(0.9 * 11)], rel=1e-6)
    assert ref.ratio("xx", ref.languages["xx"]["median_nll"] + math.log(3)) == pytest.approx(3.0)
    assert ref.fluent("xx", ordered[0], "plain words") and not ref.fluent("xx", ordered[-1] + 1, "plain words")
    assert not ref.fluent("xx", ordered[0], "<b>1</b>")  # markup is not fluent whatever its NLL
    with pytest.raises(LapeError, match="no fluency reference for yy"):
        ref.require(["xx", "yy"])


def _seq(ids, real=None):
    from lape.corpora.packing import Sequence

    mask = [1] * (real or len(ids)) + [0] * (len(ids) - (real or len(ids)))
    return Sequence(torch.tensor(ids), torch.tensor(mask))


# --------------------------------------------------------------------------------------------
# Evaluation with controls, profiles, calibration


@pytest.fixture(scope="module")
def steerer():
    model = tiny_model("llama")
    sets = NeuronSets.from_neurons({"a": [(0, 1), (1, 2), (2, 3)], "b": [(0, i) for i in range(10, 30)] + [(1, 5)]},
                                   (3, WIDTH_L), {"method": "lape", "fingerprint": fingerprint(model)})
    counts = torch.full((2, 3, WIDTH_L), 10, dtype=torch.int64)
    fire = counts.double() * 30.0
    act = fire.clone()
    act[0] = 1.0  # "a" averages low everywhere, "b" high: b's difference of means is large
    stats = ActivationStats(["a", "b"], counts, torch.tensor([50, 50]), act, fire,
                            {"fingerprint": fingerprint(model)})
    return Steerer(model, char_tokenizer(), sets, stats, SteerConfig(max_new_tokens=8, min_chars=5))


@pytest.fixture(scope="module")
def reference(steerer):
    return FluencyReference({"a": {"median_nll": 4.0, "p90_nll": 4.5, "windows": 10},
                             "b": {"median_nll": 4.2, "p90_nll": 4.8, "windows": 10}})


def test_evaluation_controls_are_what_they_say(steerer, reference):
    prompts = ["Hi there", "The weather"]
    ev = steerer.evaluate(prompts, targets=["b"], source="a", reference=reference, progress=False,
                          controls=["random", "source_on", "source_off", "no_ngram_ban"], random_seeds=[0, 1])
    assert [r["condition"] for r in ev.rows] == ["steered", "source_on", "source_off", "random", "random",
                                                 "no_ngram_ban"]
    # the settings already switch the source off: that control is the steered outputs themselves
    same = {k: v for k, v in ev.rows[0].items() if k != "condition"}
    assert {k: v for k, v in ev.rows[2].items() if k != "condition"} == same
    by = {(r["condition"], r["seed"]): r for r in ev.rows}
    rule = steerer.config.rule()
    checks = {("steered", None): dict(rule=rule), ("source_on", None): dict(rule=rule.replace(source_scale=1.0)),
              ("random", 0): dict(rule=rule, random_seed=0), ("random", 1): dict(rule=rule, random_seed=1)}
    for key, kw in checks.items():
        gens = steerer.generate(prompts, target="b", source="a", **kw)
        assert by[key]["steered_success"] == pytest.approx(sum(g.success("b") for g in gens) / 2)
        assert by[key]["steered_distinct_2"] == pytest.approx(sum(g.distinct_2 for g in gens) / 2)
        if key[0] == "random":  # outputs that stay in the source language: no fluency against the target
            assert "fluent" not in by[key]
            continue
        nll = text_nll(steerer.model, [g.tokens for g in gens], steerer.tokenizer.bos_token_id)
        assert by[key]["fluency_ratio"] == pytest.approx(statistics.median(math.exp(v - 4.2) for v in nll))
        assert by[key]["fluent"] == pytest.approx(sum(reference.fluent("b", v, g.text) for v, g in zip(nll, gens)) / 2)
        assert by[key]["non_letter"] == pytest.approx(statistics.median(non_letter_share(g.text) for g in gens))
    free = steerer.with_config(no_repeat_ngram_size=0).generate(prompts, target="b", source="a")
    assert by[("no_ngram_ban", None)]["steered_distinct_2"] == pytest.approx(sum(g.distinct_2 for g in free) / 2)
    plain = steerer.generate(prompts)
    assert by[("steered", None)]["unsteered_success"] == sum(g.success("b") for g in plain) / 2
    randoms = [g.tokens for g in steerer.generate(prompts, target="b", source="a", random_seed=0)]
    assert randoms != [g.tokens for g in steerer.generate(prompts, target="b", source="a")]
    summary = {c["condition"]: c for c in ev.condition_summary()}
    assert summary["random"]["draws"] == 2
    assert summary["random"]["sd_over_draws"] == pytest.approx(statistics.stdev(
        [by[("random", 0)]["steered_success"], by[("random", 1)]["steered_success"]]))
    with pytest.raises(LapeError, match="unknown steering control 'bogus'"):
        steerer.evaluate(prompts, targets=["b"], controls=["bogus"], progress=False)


def test_a_profile_round_trips_steers_and_is_refused_elsewhere(steerer, tmp_path):
    rules = {"b": SteeringRule(mode="add", strength=2.0, layers=(1, 2), source_scale=0.5),
             "a": SteeringRule(strength=1.0)}
    meta = {"fingerprint": fingerprint(steerer.model), "neurons": steerer.sets.identity()}
    profile = SteeringProfile(rules, [{"stage": "x", "target": "b"}], meta)
    profile.save(tmp_path)
    back = find_profile(tmp_path)
    assert back.rules == rules and back.candidates == profile.candidates
    assert find_profile(tmp_path / "nothing") is None
    with_profile = Steerer(steerer.model, steerer.tokenizer, steerer.sets, steerer.stats, steerer.config, profile=back)
    assert with_profile.rule_for("b") == rules["b"]
    got = with_profile.generate(["Hi there"], target="b", source="a")[0].tokens
    assert got == steerer.generate(["Hi there"], target="b", source="a", rule=rules["b"])[0].tokens
    with_profile.use_profile = False
    assert with_profile.rule_for("b") == steerer.config.rule()
    other = tiny_model("llama", seed=1)
    with pytest.raises(LapeError, match="steering profile"):
        back.check(other, steerer.sets)
    fewer = NeuronSets.from_neurons({"a": [(0, 1)], "b": [(0, 2)]}, (3, WIDTH_L),
                                    {"method": "lape", "fingerprint": fingerprint(steerer.model)})
    with pytest.raises(LapeError, match="calibrated for other neuron sets"):
        back.check(steerer.model, fewer)


def test_calibration_keeps_the_best_candidate_per_target(steerer, reference, tmp_path):
    config = CalibrateConfig(modes=("replace", "add"), strengths=(0.5, 2.0), layer_windows=("upper",),
                             source_scales=(1.0,))
    profile = calibrate(steerer, ["Hi there", "The weather", "Once"], ["b"], reference, source="a", config=config,
                        progress=False, out=tmp_path)
    stages = [c["stage"] for c in profile.candidates]
    assert stages == ["replace x0.5", "replace x2", "add x0.5", "add x2", "layers upper", "source x1"]
    best = max(profile.candidates, key=lambda c: (c["fluent_success"], c["success"], -c["fluency_ratio"]))
    # ties go to the earlier candidate: the first of the maxima
    first_best = next(c for c in profile.candidates if (c["fluent_success"], c["success"], -c["fluency_ratio"]) ==
                      (best["fluent_success"], best["success"], -best["fluency_ratio"]))
    assert profile.rules["b"].describe() == first_best["rule"]
    assert find_profile(tmp_path).rules == profile.rules
    again = calibrate(steerer, ["Hi there", "The weather", "Once"], ["b"], reference, source="a", config=config,
                      progress=False, out=tmp_path)
    assert again.from_cache


def test_repl_switches_between_profile_and_plain_settings(steerer):
    profile = SteeringProfile({"b": SteeringRule(mode="add", strength=2.0)}, [], {})
    s = Steerer(steerer.model, steerer.tokenizer, steerer.sets, steerer.stats, steerer.config, profile=profile)
    script = iter([":to b", ":profile", ":profile", ":quit"])
    shown: list[str] = []
    repl(s, source="a", input_fn=lambda _: next(script), output_fn=shown.append)
    assert shown[1] == "target -> b: add x2, source off (profile)"
    assert shown[2] == f"now using {steerer.config.rule().describe()} (plain settings)"
    assert shown[3] == "now using add x2, source off (profile)"
    shown.clear()
    script = iter([":profile", "Hi", ":quit"])
    repl(steerer, source="a", input_fn=lambda _: next(script), output_fn=shown.append)
    assert shown[1] == "no steering profile for these neuron sets: run lape steer-calibrate first"
    assert "neurons in" in shown[2] and "non-letters" in shown[2]  # what is edited, and the fluency figures


# --------------------------------------------------------------------------------------------
# Stability


def test_set_agreement_by_hand():
    a = NeuronSets.from_neurons({"x": [(0, 1), (0, 2), (1, 3)], "y": [(0, 5)]}, (2, 10))
    b = NeuronSets.from_neurons({"x": [(0, 1), (1, 3), (1, 4), (1, 5)], "z": [(0, 5)]}, (2, 10))
    (row,) = set_agreement(a, b)
    assert (row["label"], row["size_a"], row["size_b"], row["shared"]) == ("x", 3, 4, 2)
    assert row["jaccard"] == pytest.approx(2 / 5)
    expected_shared = (2 * 1 + 1 * 3) / 10  # per layer: a_l * b_l / width
    assert row["chance_jaccard"] == pytest.approx(expected_shared / (3 + 4 - expected_shared))
    with pytest.raises(LapeError, match="share no label"):
        set_agreement(a.subset(["y"]), b.subset(["z"]))


def test_corpus_parts_are_disjoint_halves(tmp_path):
    from tiny_models import tiny_model_folder

    from lape.corpora import load_corpus

    tiny_model_folder(tmp_path, docs=(40, 40))
    tok = char_tokenizer()

    def texts(part):
        stream = load_corpus(tmp_path / "corpus.yaml", tok, tokens_per_language=None, seq_len=4096,
                             languages=["aa"], part=part)["aa"]
        return "".join(tok.decode(s.input_ids[s.attention_mask.bool()]) for s in stream), stream.key

    whole, key = texts(None)
    first, key1 = texts((0, 2))
    second, key2 = texts((1, 2))
    assert len(first) + len(second) == pytest.approx(len(whole), rel=0.05)
    assert key1 != key2 != key and "part" not in key
    with pytest.raises(LapeError, match="part"):
        load_corpus(tmp_path / "corpus.yaml", tok, languages=["aa"], part=(2, 2))


def test_fluency_reference_is_cached_per_language(tmp_path, caplog):
    model = tiny_model("llama")
    a = [_seq([1, 5, 9, 17]), _seq([1, 30, 31, 32])]
    b = [_seq([1, 8, 8, 9]), _seq([1, 40, 41, 42])]
    first = fluency_reference(model, {"xx": a}, out=tmp_path)
    both = fluency_reference(model, {"xx": a, "yy": b}, out=tmp_path)
    assert both.languages["xx"] == first.languages["xx"]
    assert set(FluencyReference.load(tmp_path).languages) == {"xx", "yy"}
    only_y = fluency_reference(model, {"yy": b}, out=tmp_path)  # a subset: read, nothing computed
    assert list(only_y.languages) == ["yy"] and only_y.identity() == fluency_reference(model, {"yy": b}).identity()
    changed = fluency_reference(model, {"yy": [b[0]]}, out=tmp_path)  # other text: computed again
    assert changed.languages["yy"]["windows"] == 1
    assert FluencyReference.load(tmp_path).languages["xx"] == first.languages["xx"]  # the others kept


def test_lape_compare_prints_the_agreement(tmp_path, capsys):
    from lape.cli import main

    a = NeuronSets.from_neurons({"x": [(0, 1), (0, 2), (1, 3)]}, (2, 10))
    b = NeuronSets.from_neurons({"x": [(0, 1), (1, 3), (1, 4), (1, 5)]}, (2, 10))
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["label", "size", "A", "size", "B", "shared", "Jaccard", "chance"]
    assert row.split()[:5] == ["x", "3", "4", "2", "0.400"]


def _count_evaluations(monkeypatch) -> list[list[str]]:
    """From now on, every ``Steerer.evaluate`` call appends its targets to the returned list."""
    generated: list[list[str]] = []
    original = Steerer.evaluate

    def counting(self, prompts, targets, *args, **kwargs):
        generated.append(list(targets))
        return original(self, prompts, targets, *args, **kwargs)

    monkeypatch.setattr(Steerer, "evaluate", counting)
    return generated


def test_calibration_reuses_scored_candidates_and_refines_weak_targets(steerer, reference, tmp_path, monkeypatch):
    prompts = ["Hi there", "The weather", "Once"]
    config = CalibrateConfig(modes=("replace", "add"), strengths=(0.5, 2.0), layer_windows=("upper",))
    first = calibrate(steerer, prompts, ["b"], reference, source="a", config=config, progress=False, out=tmp_path)
    generated = _count_evaluations(monkeypatch)
    refined = calibrate(steerer, prompts, ["b"], reference, source="a", progress=False, out=tmp_path,
                        config=config.replace(refine_below=1.0, refine_top=2))
    assert not refined.from_cache
    stages = [c["stage"] for c in refined.candidates]
    assert stages[:5] == [c["stage"] for c in first.candidates]  # the earlier search, read back
    assert stages[5:] == ["refine: candidate 1, layers upper", "refine: candidate 2, layers upper"]
    for old, new in zip(first.candidates, refined.candidates):
        assert old == new
    ranked = sorted(first.candidates[:4], key=lambda c: (c["fluent_success"], c["success"], -c["fluency_ratio"]),
                    reverse=True)
    tried = [(c["mode"], c["strength"], tuple(c["layers"])) for c in refined.candidates[5:]]
    assert [(m, s) for m, s, _ in tried] == [(c["mode"], c["strength"]) for c in ranked[:2]]
    # only candidates never scored were generated: a refined rule equal to an earlier one is read back
    new_rules = [c for c in refined.candidates[5:] if c["rule"] not in {o["rule"] for o in first.candidates}]
    assert len(generated) == len(new_rules)


def test_an_interrupted_calibration_resumes_from_the_candidates_it_had_scored(steerer, reference, tmp_path,
                                                                              monkeypatch):
    """Ctrl-C after the third candidate: the re-run generates only the candidates not yet scored
    and ends with the profile of an uninterrupted search (it once started again from nothing)."""
    prompts = ["Hi there", "The weather"]
    config = CalibrateConfig(modes=("replace", "add"), strengths=(0.5, 2.0), layer_windows=("upper",))
    whole = calibrate(steerer, prompts, ["b"], reference, source="a", config=config, progress=False)
    original, calls = Steerer.evaluate, []

    def stop_after_three(self, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Steerer, "evaluate", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        calibrate(steerer, prompts, ["b"], reference, source="a", config=config, progress=False, out=tmp_path)
    monkeypatch.setattr(Steerer, "evaluate", original)
    generated = _count_evaluations(monkeypatch)
    resumed = calibrate(steerer, prompts, ["b"], reference, source="a", config=config, progress=False, out=tmp_path)
    assert len(generated) == len(whole.candidates) - 3
    assert resumed.candidates == whole.candidates and resumed.rules == whole.rules
    assert [p.name for p in tmp_path.iterdir() if "scored" in p.name] == []  # the checkpoint is gone


def test_describe_edits_names_the_neurons_per_layer():
    from lape.evaluate.steering import describe_edits

    edits = [Edit(0, torch.tensor([3, 5]), "set", 0.0), Edit(2, torch.tensor([1]), "add", 1.0),
             Edit(0, torch.tensor([5, 9]), "mul", 0.5)]  # neuron (0, 5) twice: counted once
    assert describe_edits(edits) == "4 neurons in 2 layers (L0 3, L2 1)"
    assert describe_edits([]) == "no neurons"


def test_polish_searches_around_the_best_rule_of_targets_still_weak(steerer, reference, tmp_path):
    prompts = ["Hi there", "The weather"]
    config = CalibrateConfig(modes=("replace", "add"), strengths=(0.5, 2.0), layer_windows=("upper",),
                             refine_below=1.0, refine_top=1)
    before = calibrate(steerer, prompts, ["b"], reference, source="a", config=config, progress=False, out=tmp_path)
    polished = calibrate(steerer, prompts, ["b"], reference, source="a", progress=False, out=tmp_path,
                         config=config.replace(polish_strengths=(3.0, 0.25), polish_windows=("lower", "all")))
    centre = before.rules["b"]  # the best rule before the local search
    tail = polished.candidates[len(before.candidates):]
    assert before.meta["dev_scores"]["b"]["fluent_success"] < 1.0  # weak, so it is polished
    assert [c["stage"] for c in tail] == ["polish: x3, layers lower", "polish: x3, layers all",
                                          "polish: x0.25, layers lower", "polish: x0.25, layers all"]
    for c in tail:  # the centre's mode, source scale and neurons; only strength and window vary
        assert (c["mode"], c["source_scale"], c["exclusive"]) == (centre.mode, centre.source_scale, centre.exclusive)
    lower = tuple(range(steerer.space.num_layers // 2))
    assert tuple(tail[0]["layers"]) == lower and tail[1]["layers"] is None
    best = max([*before.candidates, *tail], key=lambda c: (c["fluent_success"], c["success"], -c["fluency_ratio"]))
    assert polished.meta["dev_scores"]["b"]["fluent_success"] == best["fluent_success"]


def test_a_changed_success_rule_rescores_only_the_targets_it_touches(steerer, reference, tmp_path, monkeypatch):
    """Counting a macrolanguage member ("xx" as "b") changes b's scores: the calibration and the
    evaluation must not serve b's cached scores, but may reuse a's."""
    import lape.langid

    monkeypatch.setattr(lape.langid, "classify", lambda text: "xx")  # every output: raw label "xx"
    prompts = ["Hi there", "The weather"]
    config = CalibrateConfig(modes=("replace",), strengths=(0.5, 2.0))
    first = calibrate(steerer, prompts, ["a", "b"], reference, source=None, config=config, progress=False,
                      out=tmp_path)
    assert all(c["success"] == 0 for c in first.candidates)  # "xx" is nobody's language yet
    ev_dir = tmp_path / "eval"
    steerer.evaluate(prompts, ["b"], source=None, progress=False, out=ev_dir)
    assert steerer.evaluate(prompts, ["b"], source=None, progress=False, out=ev_dir).from_cache

    generated = _count_evaluations(monkeypatch)
    monkeypatch.setitem(lape.langid.LANGUAGE_OF_LABEL, "yy", "zz")  # touches neither target
    again = calibrate(steerer, prompts, ["a", "b"], reference, source=None, config=config, progress=False,
                      out=tmp_path)
    assert again.from_cache and generated == []
    monkeypatch.setitem(lape.langid.LANGUAGE_OF_LABEL, "xx", "b")  # now "xx" counts as "b"
    rescored = calibrate(steerer, prompts, ["a", "b"], reference, source=None, config=config, progress=False,
                         out=tmp_path)
    assert not rescored.from_cache
    assert generated == [["b"], ["b"]]  # one trial per strength, b only; a's scores are read back
    assert [c for c in rescored.candidates if c["target"] == "a"] == \
        [c for c in first.candidates if c["target"] == "a"]
    b_new = [c for c in rescored.candidates if c["target"] == "b"]
    assert all(c["accepts"] == ["b", "xx"] for c in b_new)
    assert any(c["success"] > 0 for c in b_new)  # the same kind of outputs now count for b
    generated.clear()
    assert not steerer.evaluate(prompts, ["b"], source=None, progress=False, out=ev_dir).from_cache


def test_a_cache_hit_under_another_prompt_set_name_writes_nothing(steerer, tmp_path):
    prompts = ["Hi there", "The weather"]
    first = steerer.evaluate(prompts, ["b"], source="a", progress=False, prompt_set="mine:dev", out=tmp_path)
    assert first.meta["prompt_set"] == "mine:dev"
    saved = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    again = steerer.evaluate(prompts, ["b"], source="a", progress=False, prompt_set="mine:copy", out=tmp_path)
    assert again.from_cache and again.meta["prompt_set"] == "mine:copy"
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == saved  # the saved result is untouched


def test_a_changed_script_check_rescores_only_the_targets_it_touches(steerer, reference, tmp_path, monkeypatch):
    """The script check is part of the success rule: a script entry for "b" must rescore b (in
    the calibration and the evaluation), and leave a's cached scores alone."""
    import lape.langid

    monkeypatch.setattr(lape.langid, "classify", lambda text: "b")  # every output: identified as b
    prompts = ["Hi there", "The weather"]
    config = CalibrateConfig(modes=("replace",), strengths=(2.0,))
    first = calibrate(steerer, prompts, ["a", "b"], reference, source=None, config=config, progress=False,
                      out=tmp_path)
    b_first = [c for c in first.candidates if c["target"] == "b"]
    assert all(c["script"] is None for c in first.candidates)  # neither has a script entry: no check
    assert any(c["success"] > 0 for c in b_first)
    ev_dir = tmp_path / "eval"
    before = steerer.evaluate(prompts, ["b"], source=None, progress=False, out=ev_dir)

    generated = _count_evaluations(monkeypatch)
    monkeypatch.setitem(lape.langid.SCRIPTS, "b", ("HANGUL",))  # the tiny outputs hold no Hangul
    rescored = calibrate(steerer, prompts, ["a", "b"], reference, source=None, config=config, progress=False,
                         out=tmp_path)
    assert not rescored.from_cache and generated == [["b"]]  # b only; a's scores are read back
    assert [c for c in rescored.candidates if c["target"] == "a"] == \
        [c for c in first.candidates if c["target"] == "a"]
    b_new = [c for c in rescored.candidates if c["target"] == "b"]
    assert b_new[0]["script"] == lape.langid.script_rule("b") and b_new[0]["script"]["scripts"] == ["HANGUL"]
    assert all(c["success"] == 0 for c in b_new)  # the same outputs, now out of b's script
    after = steerer.evaluate(prompts, ["b"], source=None, progress=False, out=ev_dir)
    assert not after.from_cache
    assert after.rows[0]["steered_success"] == 0 and after.rows[0]["steered_target_language"] == 1.0
    assert after.rows[0]["steered_script_fail"] == before.rows[0]["steered_success"] == 1.0
