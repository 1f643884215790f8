"""Steering: degeneracy measures, success rules, Steerer on a tiny model with a char tokenizer, the REPL."""

from __future__ import annotations

import pytest
import torch
from tiny_models import WIDTH, tiny_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lape.errors import LapeError
from lape.evaluate.steer_repl import repl
from lape.evaluate.steering import (
    Generation,
    SteerConfig,
    Steerer,
    distinct_n,
    max_token_share,
)
from lape.langid import classify, identify, labels_of_language
from lape.masks import NeuronSets
from lape.neurons.stats import ActivationStats


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: 4 specials and the 92 characters from ' ' to '{' (96 ids, the
    tiny models' vocabulary)."""
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    vocab.update({chr(c): i + 4 for i, c in enumerate(range(32, 124))})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def test_distinct_n_and_max_token_share_by_hand():
    assert distinct_n([1, 2, 3, 4]) == 1.0
    assert distinct_n([1, 2, 1, 2]) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([7, 7, 7, 7, 7]) == pytest.approx(1 / 4)
    assert distinct_n([1, 2, 1, 2], n=1) == pytest.approx(2 / 4)
    assert distinct_n([1, 2, 3, 1, 2, 3], n=3) == pytest.approx(3 / 4)  # 123 231 312 123
    assert max_token_share([1, 1, 2, 3]) == pytest.approx(0.5)
    assert max_token_share([4, 5, 6]) == pytest.approx(1 / 3)
    assert max_token_share([]) == 1.0  # nothing generated counts as degenerate


def _gen(text: str, tokens: list[int], min_chars: int = 20) -> Generation:
    return Generation(text, tokens, identify(text, min_chars)[0], distinct_n(tokens), max_token_share(tokens))


def test_success_rules():
    repetitive = _gen("肉" * 40, [50] * 40)
    assert repetitive.language == "zh"  # the identifier is fooled ...
    assert not repetitive.success("zh")  # ... but the output is degenerate
    blank = _gen("   \n\n   \t ", [4, 4, 4, 4, 4])
    assert blank.language is None and not blank.success("en")
    assert identify("a b c d e f g h i j k l m n o p q r s", 20)[0] is None  # 19 characters
    assert identify("abcdefghijklmnopqrs t", 20)[0] is not None  # 20
    short = _gen("Bonjour", [1, 2, 3, 4, 5, 6, 7])
    assert short.language is None and not short.success("fr")
    text = "Le chat dort sur le canapé pendant que la pluie tombe doucement."
    good = _gen(text, list(range(len(text))))
    assert good.language == "fr" and good.success("fr") and not good.success("en")
    # the bars: no token above a third of the output, distinct-2 at least 0.5
    assert _gen(text, [9, 9, 1, 2, 3, 4]).success("fr")  # share 1/3, distinct-2 1
    assert not _gen(text, [9, 9, 9, 1, 2, 3, 4]).success("fr")  # share 3/7, distinct-2 5/6
    assert not _gen(text, [1, 2, 3, 1, 2, 3, 1, 2, 3]).success("fr")  # share 1/3, distinct-2 3/8


LABELS = {"a": [(0, 1), (1, 2), (2, 3), (2, 4)], "b": [(0, i) for i in range(10, 30)] + [(1, 5), (2, 6)],
          "c": []}


@pytest.fixture(scope="module")
def steerer():
    model = tiny_model("llama")
    width = WIDTH["llama"]
    sets = NeuronSets.from_neurons(LABELS, (3, width), {"method": "lape"})
    counts = torch.full((3, 3, width), 10, dtype=torch.int64)
    fire_sums = counts.double() * 30.0  # large firing values: activating them changes the output
    stats = ActivationStats(["a", "b", "c"], counts, torch.tensor([50, 50, 50]), fire_sums.clone(), fire_sums)
    return Steerer(model, char_tokenizer(), sets, stats, SteerConfig(max_new_tokens=8, min_chars=5))


def _greedy(model, tok, prompt, n, no_repeat_ngram_size):
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, repetition_penalty=1.1,
                             no_repeat_ngram_size=no_repeat_ngram_size, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_steering_changes_tokens_only_when_neurons_are_switched(steerer):
    prompt = "The weather"
    plain = steerer.generate([prompt])[0]
    new = [t for t in _greedy(steerer.model, steerer.tokenizer, prompt, 8,
                              steerer.config.no_repeat_ngram_size) if t != 0]  # no pads
    expected = new[:new.index(2)] if 2 in new else new  # cut at <eos>
    assert plain.tokens == expected
    assert plain.text == steerer.tokenizer.decode(plain.tokens)
    empty = steerer.generate([prompt], target="c", source=None)[0]
    assert empty.tokens == plain.tokens  # nothing to switch: same as unsteered
    steered = steerer.generate([prompt], target="b", source="a")[0]
    assert steered.tokens != plain.tokens
    out = steerer.steer(prompt, to="b", source="a")
    assert out.unsteered.tokens == plain.tokens and out.steered.tokens == steered.tokens


def test_batched_prompts_with_left_padding_equal_single_prompts(steerer):
    prompts = ["Hi", "The weather today"]
    batch = steerer.generate(prompts, target="b", source="a")
    single = [steerer.generate([p], target="b", source="a")[0] for p in prompts]
    assert [g.tokens for g in batch] == [g.tokens for g in single]


def test_a_tokenizer_without_a_pad_token_is_left_without_one(steerer):
    """Generation pads with EOS for its own call; the caller's tokenizer kept the borrowed pad
    token afterwards (its later batches padded with EOS, and its pad id changed)."""
    tok = char_tokenizer()
    tok.pad_token = None
    s = Steerer(steerer.model, tok, steerer.sets, steerer.stats, steerer.config)
    prompts = ["Hi", "The weather today"]
    batch = s.generate(prompts, target="b", source="a")
    assert tok.pad_token is None and tok.pad_token_id is None and tok.padding_side == "right"
    single = [s.generate([p], target="b", source="a")[0] for p in prompts]
    assert [g.tokens for g in batch] == [g.tokens for g in single]


def test_one_batch_with_mixed_targets_equals_one_target_at_a_time(steerer):
    prompts = ["Hi", "The weather today", "Hi", "The weather today", "Hi"]
    targets = ["b", "b", None, "a", "a"]
    strengths = [1.0, 2.0, 1.0, 1.0, 0.5]
    mixed = steerer.generate(prompts, target=targets, source="a", strength=strengths)
    alone = [steerer.generate([p], target=t, source="a", strength=s)[0]
             for p, t, s in zip(prompts, targets, strengths)]
    assert [g.tokens for g in mixed] == [g.tokens for g in alone]
    assert mixed[0].tokens != mixed[2].tokens  # steering did change the batch's first prompt
    ev = steerer.evaluate(prompts[:2], targets=["a", "b"], source=None, strengths=[1.0, 2.0], progress=False)
    for row in ev.rows:
        gens = [steerer.generate([p], target=row["target"], strength=row["strength"])[0] for p in prompts[:2]]
        assert row["steered_distinct_2"] == pytest.approx(sum(g.distinct_2 for g in gens) / 2)


def _repeated_bigrams(tokens: list[int]) -> int:
    bigrams = list(zip(tokens, tokens[1:]))
    return len(bigrams) - len(set(bigrams))


@pytest.mark.parametrize("target, source", [(None, None), ("b", "a")])
def test_no_repeat_ngram_size_reaches_generate(steerer, target, source):
    from dataclasses import replace

    prompt, n = "abcd", 12  # a prompt without a repeated bigram of its own
    prompt_ids = steerer.tokenizer(prompt).input_ids
    assert _repeated_bigrams(prompt_ids) == 0

    def run(ban: int):
        config = replace(steerer.config, no_repeat_ngram_size=ban, repetition_penalty=1.0, max_new_tokens=n)
        s = Steerer(steerer.model, steerer.tokenizer, steerer.sets, steerer.stats, config)
        return s.generate([prompt], target=target, source=source)[0]

    loose, strict = run(0), run(2)  # the ban is the only difference between the two runs
    assert len(loose.tokens) == len(strict.tokens) == n  # no early <eos>: all 12 steps were decoded
    # greedy decoding of the tiny model loops without the ban ...
    assert _repeated_bigrams(loose.tokens) >= 1
    assert loose.distinct_2 < 1.0
    # ... and repeats no bigram with it, counting the prompt's bigrams too (the ban covers them)
    assert _repeated_bigrams(prompt_ids + strict.tokens) == 0
    assert strict.distinct_2 == 1.0
    assert strict.tokens != loose.tokens


def test_bad_language_codes_are_one_line_errors(steerer):
    with pytest.raises(LapeError) as err:
        steerer.steer("x", to="zz", source="a")
    assert str(err.value) == "target language 'zz' has no neuron set: choose one of a, b, c"
    with pytest.raises(LapeError, match="source language 'en' has no neuron set: choose one of a, b, c"):
        steerer.steer("x", to="b", source="en")
    with pytest.raises(LapeError, match="target language 'q'"):
        steerer.evaluate(["x"], targets=["q"], progress=False)


def test_repl_answers_a_scripted_session(steerer):
    script = [":help", ":to b", ":strength 2", "some prompt", ":off", "prompt", ":to zz", ":bogus", ":quit",
              "never read"]
    asked, shown = [], []

    def input_fn(prompt: str) -> str:
        asked.append(prompt)
        return script[len(asked) - 1]

    assert repl(steerer, target="a", source="a", input_fn=input_fn, output_fn=shown.append) == 0
    assert len(asked) == 9  # stopped at :quit
    # the rule's own strength until ":strength 2" overrides it
    assert asked[:4] == ["[a]> ", "[a]> ", "[b]> ", "[b x2]> "]
    assert asked[5] == "[off x2]> "
    assert shown[0].startswith("lape steering REPL: target a, source a")
    assert ":to LANG" in shown[1] and ":quit" in shown[1]
    assert shown[2] == f"target -> b: {steerer.config.rule().describe()} (plain settings)"
    assert shown[3] == "strength -> 2"
    expected = steerer.steer("some prompt", to="b", source="a", strength=2.0)
    assert shown[4] == expected.format()
    assert shown[4].startswith("prompt     'some prompt'") and "a->b" in shown[4]
    assert shown[5] == "steering off"
    plain = steerer.generate(["prompt"])[0]
    assert shown[6] == f"unsteered  [{plain.language or '?'}] {plain.text.strip()!r}"
    assert shown[7] == "unknown language 'zz': choose one of a b c"
    assert shown[8] == "unknown command :bogus (:help lists them)"
    assert len(shown) == 9


def test_repl_ends_at_end_of_input(steerer):
    def input_fn(prompt: str) -> str:
        raise EOFError

    shown = []
    assert repl(steerer, input_fn=input_fn, output_fn=shown.append) == 0
    assert len(shown) == 1


def test_macrolanguage_members_count_as_their_macrolanguage():
    egyptian = "انا مش عارف ايه اللي حصل النهارده في الشغل بس الموضوع كان صعب قوي"
    moroccan = "والله ما عارف شنو نقول ليك دابا حيت بزاف ديال الخدمة"
    cantonese = "我哋今日去咗街市買嘢食，好多人呀"
    assert [classify(t) for t in (egyptian, moroccan, cantonese)] == ["arz", "ary", "yue"]  # raw labels
    assert [identify(t, 5)[0] for t in (egyptian, moroccan, cantonese)] == ["ar", "ar", "zh"]
    assert _gen(egyptian, list(range(30))).success("ar")
    assert not _gen(egyptian, list(range(30))).success("fa")
    assert labels_of_language("ar") == ["ar", "ary", "arz"]
    assert labels_of_language("fr") == ["fr"]
    assert labels_of_language("no") == ["nb", "nn", "no"]
    g = Generation(egyptian, list(range(30)), "ar", 1.0, 0.1, label="arz")
    assert g.shown_language == "ar/arz"
    assert Generation("x", [1], None, 0.0, 1.0).shown_language == "?"


def test_builtin_prompt_sets_are_disjoint_and_the_test_set_is_refused_for_calibration(capsys):
    from lape.cli import main
    from lape.prompts import PROMPT_SETS, load_prompts

    sets = {name: load_prompts(f"builtin:{name}") for name in PROMPT_SETS if name != "parallel"}
    assert len(sets["test"]) >= 60 and len(sets["test1"]) == 70 and len(sets["dev"]) == 40
    for name, prompts in sets.items():
        assert len(set(prompts)) == len(prompts), name
    folded = {name: {p.lower() for p in prompts} for name, prompts in sets.items()}
    assert not folded["test"] & (folded["dev"] | folded["test1"])  # the held-out set shares no prompt
    assert not folded["dev"] & folded["test1"]
    assert main(["steer-calibrate", "--neurons", "nowhere", "--stats", "nowhere", "--prompts", "builtin:test"]) == 2
    assert "builtin:test holds the held-out prompts" in capsys.readouterr().err


def test_script_share_check_refuses_punctuation_labelled_chinese():
    from lape.langid import MIN_SCRIPT_SHARE, in_script, script_rule, script_share

    commas = "，" * 25
    assert classify(commas) == "wuu" and identify(commas)[0] == "zh"  # the identifier is fooled ...
    assert script_share(commas, "zh") == 0.0 and not in_script(commas, "zh")
    fooled = Generation(commas, list(range(25)), "zh", 1.0, 0.04, label="wuu")
    assert not fooled.success("zh")  # ... the script check is not
    chinese = "今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天。"
    assert identify(chinese)[0] == "zh" and _gen(chinese, list(range(30))).success("zh")
    # by hand: 24 Han characters of 27 non-blank ones (three punctuation marks)
    assert script_share(chinese, "zh") == pytest.approx(24 / 27)
    arabic = "ذهبت إلى السوق صباحا واشتريت الخبز والحليب والفاكهة الطازجة"
    assert in_script(arabic, "ar") and not in_script(arabic, "ru")
    assert script_share(arabic, "ru") == 0.0 and script_share(arabic, "ar") == 1.0
    assert not _gen(arabic, list(range(30))).success("ru")
    # kana and Han both count for Japanese; fullwidth Latin counts as Latin (NFKC)
    assert script_share("ひらがなカタカナ漢字ー", "ja") == 1.0 and script_share("ひらがな", "zh") == 0.0
    assert script_share("ＡＢＣ abc", "en") == 1.0
    # by hand: "ok, 123" -> digits are not counted: "o", "k", "," -> 2 Latin letters of 3
    assert script_share("ok, 123", "en") == pytest.approx(2 / 3) and in_script("ok, 123", "en")
    assert script_share("o, ..., 123", "en") == pytest.approx(1 / 6) and not in_script("o, ..., 123", "en")
    # a Korean date keeps its digits without failing; markup around Korean words fails (tags are Latin)
    date = "꽤나 춥고,\n이날은 10월 23일(토) 14:05~16:"
    assert script_share(date, "ko") == pytest.approx(10 / 16) and in_script(date, "ko")
    assert not in_script("<b>“</b><b>미술</b><b>”</b>", "ko")
    assert script_share("", "fr") == 0.0
    assert script_share("anything", "a") is None and in_script("，，，", "a")  # no script entry: no check
    assert script_rule("zh") == {"scripts": ["CJK", "IDEOGRAPHIC"], "min_share": MIN_SCRIPT_SHARE,
                                 "of": "non-blank non-digit characters"}
    assert script_rule("a") is None


def test_every_success_rate_carries_its_wilson_interval(steerer):
    from lape.evaluate.steering_result import SteeringEval, pooled_interval, rate_interval
    from lape.intervals import wilson

    assert rate_interval(65 / 70, 70) == wilson(65, 70)
    assert rate_interval(float("nan"), 70).low != rate_interval(float("nan"), 70).low  # NaN
    # pooled by hand: 3 of 4 and 1 of 4 -> 4 of 8
    assert pooled_interval([(0.75, 4), (0.25, 4)]) == wilson(4, 8)
    rows = [{"condition": "steered", "seed": None, "target": "a", "strength": 1.0, "prompts": 4,
             "steered_success": 0.75, "unsteered_success": 0.0, "steered_success_own_label": 0.5},
            {"condition": "steered", "seed": None, "target": "b", "strength": 1.0, "prompts": 4,
             "steered_success": 0.25, "unsteered_success": 0.25},
            *({"condition": "random", "seed": s, "target": t, "strength": 1.0, "prompts": 4, "steered_success": v,
               "unsteered_success": 0.0} for s, t, v in ((0, "a", 0.0), (1, "a", 0.25), (0, "b", 0.5), (1, "b", 0.5)))]
    ev = SteeringEval(rows, [], {"prompts": 4})
    summary = ev.tables()["summary"]
    w = wilson(3, 4)
    assert (summary[0]["steered_success_low"], summary[0]["steered_success_high"]) == (w.low, w.high)
    assert summary[0]["steered_success_own_label_low"] == wilson(2, 4).low
    assert "steered_success_own_label_low" not in summary[1]
    by = {c["condition"]: c for c in ev.tables()["conditions"]}
    assert (by["steered"]["mean_success_low"], by["steered"]["mean_success_high"]) == (wilson(4, 8).low,
                                                                                      wilson(4, 8).high)
    assert by["steered"]["min_success_low"] == wilson(1, 4).low  # b, the smallest
    assert by["unsteered"]["mean_success_high"] == wilson(1, 8).high
    # the random control: every draw of every target pooled (0 + 1 + 2 + 2 of 16); smallest: a's draws, 1 of 8
    assert by["random"]["mean_success_low"] == wilson(5, 16).low
    assert by["random"]["min_success_high"] == wilson(1, 8).high
    assert "93% (84-97%)" in SteeringEval([{**rows[0], "prompts": 70, "steered_success": 65 / 70,
                                           "steered_distinct_2": 1.0}], [],
                                          {}).summary_lines()[0]
    # a real evaluation: every row's interval is Wilson on its prompts
    ev = steerer.evaluate(["Hi", "The weather today"], targets=["a", "b"], source=None, progress=False)
    for r in ev.tables()["summary"]:
        k = round(r["steered_success"] * 2)
        assert (r["steered_success_low"], r["steered_success_high"]) == (wilson(k, 2).low, wilson(k, 2).high)


def _fabricated_test_eval(n: int = 70):
    """A held-out evaluation as scripts/run_steering.sh saves it: fr 65 of 70, zh 70 of 70, with
    every control (random: two draws)."""
    from lape.evaluate.steering_result import SteeringEval

    def row(condition, target, success, seed=None, **extra):
        return {"condition": condition, "seed": seed, "target": target, "strength": 1.5, "rule": "add x1.5",
                "prompts": n, "steered_success": success, "unsteered_success": 0.0,
                "steered_target_language": success, "steered_script_fail": 1 / n if target == "zh" else 0.0,
                "steered_success_own_label": success, "steered_distinct_2": 0.9, "unsteered_distinct_2": 0.95,
                "steered_repetition": 0.1, "steered_degenerate": 0.0, "non_letter": 0.1,
                "identified": {target: n}, "fluency_ratio": 0.3, "fluent": success, "fluent_success": success,
                **extra}

    rows = []
    for t, k in (("fr", 65), ("zh", 70)):
        rows += [row("steered", t, k / n), row("source_on", t, 0.5), row("source_off", t, k / n),
                 row("random", t, 0.0, seed=0), row("random", t, 1 / n, seed=1), row("no_ngram_ban", t, 0.9),
                 row("plain", t, 0.8)]
    examples = [{"target": "fr", "strength": 1.5, "prompt": "The weather", "unsteered": "is fine",
                 "unsteered_language": "en", "steered": "Il fait beau", "steered_language": "fr", "success": True}]
    meta = {"source": "en", "targets": ["fr", "zh"], "prompts": n, "prompt_set": "builtin:test",
            "config": {"max_new_tokens": 32}, "profile": {"fr": {}, "zh": {}}}
    return SteeringEval(rows, examples, meta)


def test_the_readme_and_the_report_show_every_steering_rate_with_its_interval(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from lape import report
    from lape.intervals import wilson

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    import readme_steering

    monkeypatch.setattr(readme_steering, "ROOT", tmp_path)  # the bar figure goes to tmp_path/docs/figures
    run = tmp_path / "run"
    _fabricated_test_eval().save(run / "steer-test")
    text = readme_steering.steering_section(run)
    fr, zh = wilson(65, 70).format(percent=True), wilson(70, 70).format(percent=True)
    assert fr == "93% (84-97%)"
    assert f"| fr | add x1.5 | **{fr}** | {fr} | {fr} |" in text  # success, own label, fluent success
    assert f"| zh | add x1.5 | **{zh}** |" in text
    assert f"| {wilson(0, 70).format(percent=True)} | {wilson(1, 140).format(percent=True)} ± 1% |" in text
    assert f"mean {wilson(135, 140).format(percent=True)}, smallest {fr}" in text  # pooled over both targets
    assert "1 of the 140 steered outputs were identified as their target but fail this check" in text
    assert f"| random | {wilson(2, 280).format(percent=True)} |" in text  # both targets' draws pooled
    assert (tmp_path / "docs" / "figures" / "steer-steering_bars.png").is_file()
    del sys.modules["readme_steering"]
    (run / "plots").mkdir()
    page = report.write_report(run).read_text(encoding="utf-8")
    assert fr in page and zh in page and wilson(135, 140).format(percent=True) in page
    assert "Wilson 95% interval" in page
