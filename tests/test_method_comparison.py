"""The three-method comparison: hypergeometric p-values of the overlaps, size-matched random rows
for the NLL effects, and perplexity text disjoint from the cloze questions."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from scipy.stats import fisher_exact
from tiny_models import WIDTH, char_tokenizer, tiny_model, tiny_model_folder

from lape.corpora import iter_documents
from lape.errors import LapeError
from lape.keyneurons.cloze import BLANK, cloze_questions
from lape.keyneurons.compare import (
    MethodComparison,
    cloze_sentences,
    comparison_text,
    family_overlaps,
    random_label,
    with_random,
)
from lape.keyneurons.prompts import Question
from lape.masks import NeuronSets
from lape.neurons.select import random_like


def _sets(neurons: dict[str, list[tuple[int, int]]], shape=(3, 20)) -> NeuronSets:
    return NeuronSets.from_neurons(neurons, shape, {"method": "test"})


def test_overlap_p_values_match_an_independent_computation():
    # fr: A has 6 neurons (layers 0, 0, 0, 1, 1, 2), B 5 (layers 0, 0, 1, 2, 2); they share 3
    a = _sets({"fr": [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (2, 6)]})
    b = _sets({"fr": [(0, 1), (0, 2), (1, 4), (2, 7), (2, 8)]})
    (row,) = family_overlaps({"A": a, "B": b}, ["fr"])
    assert (row["size_a"], row["size_b"], row["overlap"]) == (6, 5, 3)
    # all 60 neurons as one population: Fisher's one-sided exact test on the 2 x 2 table
    table = [[3, 6 - 3], [5 - 3, 60 - 6 - 5 + 3]]
    assert row["p_value"] == pytest.approx(fisher_exact(table, alternative="greater").pvalue, rel=1e-9)
    # counts per layer kept: per layer sizes (3, 2), (2, 1), (1, 2) of 20; enumerate every per-layer overlap
    layers = [(3, 2), (2, 1), (1, 2)]

    def pmf(k: int, na: int, nb: int, width: int = 20) -> float:
        return math.comb(na, k) * math.comb(width - na, nb - k) / math.comb(width, nb)

    tail = sum(math.prod(pmf(k, na, nb) for k, (na, nb) in zip(ks, layers))
               for ks in itertools.product(*(range(min(na, nb) + 1) for na, nb in layers)) if sum(ks) >= 3)
    assert row["p_value_layers"] == pytest.approx(tail, rel=1e-9)
    assert row["chance"] == pytest.approx((3 * 2 + 2 * 1 + 1 * 2) / 20)
    assert row["p_value_layers"] > row["p_value"]  # keeping the layers makes the overlap less surprising


def test_random_rows_have_the_method_sets_counts_per_layer():
    sets = _sets({"fr": [(0, 1), (0, 2), (2, 5)], "de": [(1, i) for i in range(8)], "ru": [(0, 0)]}, (3, 48))
    rows = with_random(sets, ["fr", "de"], draws=3, seed=7)
    assert rows.labels == ["fr", "de", *(random_label(k, lang) for k in range(3) for lang in ("fr", "de"))]
    per_layer = rows.counts_per_layer()
    assert per_layer["fr"] == [2, 0, 1] and per_layer["de"] == [0, 8, 0]
    for k in range(3):
        for lang in ("fr", "de"):
            assert per_layer[random_label(k, lang)] == per_layer[lang]
            assert not torch.equal(rows.mask(random_label(k, lang)), sets.mask(lang))
        assert torch.equal(rows.mask(random_label(k, "fr")), random_like(sets.subset(["fr", "de"]), 7 + k).mask("fr"))
    assert not torch.equal(rows.mask(random_label(0, "de")), rows.mask(random_label(1, "de")))  # distinct draws


def _cloze(uid: str, sentence: str, word: str, lang: str) -> Question:
    blanked = sentence.replace(word, BLANK, 1)
    return Question(uid, f"Fill in the blank.\n{blanked}", ("zz", word, "yy", "xx"), 1, lang, lang,
                    "cloze from lape corpus.yaml corpus valid split")


def test_perplexity_text_holds_no_cloze_sentence(tmp_path):
    tiny_model_folder(tmp_path, docs=(40, 40), valid_share=0.5)
    manifest = tmp_path / "corpus.yaml"
    valid = {lang: list(iter_documents(manifest, lang, "valid")) for lang in ("aa", "bb")}
    # a question from the middle of the first two aa documents and the third bb one
    picked = [("aa", valid["aa"][0]), ("aa", valid["aa"][1]), ("bb", valid["bb"][2])]
    questions = [_cloze(f"cloze/{lang}/{i}", doc.split(" ", 1)[1], doc.split(" ")[2], lang)
                 for i, (lang, doc) in enumerate(picked)]
    sentences = cloze_sentences(questions)
    assert sentences == {doc.split(" ", 1)[1] for _, doc in picked}
    tok = char_tokenizer()
    text, info = comparison_text(manifest, tok, ["aa", "bb"], questions, tokens_per_language=10_000, seq_len=64)
    assert info == {"split": "valid", "dropped_documents": {"aa": 2, "bb": 1}}  # the manifest has no parallel split
    for lang, seqs in text.items():
        # a document that does not fit continues in the next sequence: the decoded sequences, joined, are the
        # kept documents one after the other (the separators are special tokens)
        decoded = "".join(tok.decode(s.input_ids[s.attention_mask.bool()].tolist(), skip_special_tokens=True)
                          for s in seqs)
        assert decoded == "".join(d for d in valid[lang] if d not in {doc for _, doc in picked})
        assert not any(s in decoded for s in sentences)
    every = [_cloze(f"cloze/aa/{i}", d.split(" ", 1)[1], d.split(" ")[2], "aa") for i, d in enumerate(valid["aa"])]
    with pytest.raises(LapeError, match="every valid document of 'aa' holds a cloze question's sentence"):
        comparison_text(manifest, tok, ["aa"], every, tokens_per_language=100, seq_len=64)


def test_builtin_comparison_text_is_the_parallel_split_and_misses_every_cloze_sentence():
    questions = [q for lang in ("fr", "zh") for q in cloze_questions(lang, 40)]  # from the valid split
    sentences = cloze_sentences(questions)
    assert len(sentences) > 30
    text, info = comparison_text("builtin", char_tokenizer(), ["fr", "zh"], questions, tokens_per_language=64,
                                 seq_len=32)
    assert info["split"] == "parallel" and info["dropped_documents"] == {"fr": 0, "zh": 0}
    for lang in ("fr", "zh"):
        docs = list(iter_documents("builtin", lang, "parallel"))
        assert not any(s in d for s in sentences for d in docs)
        assert sum(int(s.attention_mask.sum()) for s in text[lang]) == 64


def test_method_comparison_puts_size_matched_random_rows_beside_each_method(tmp_path):
    from lape.evaluate.perplexity import PerplexityConfig, ppl_matrix
    from lape.keyneurons.run import KeyNeuronsRunConfig, method_comparison

    tiny_model_folder(tmp_path, docs=(40, 40), valid_share=0.5)
    manifest = tmp_path / "corpus.yaml"
    model, tok = tiny_model("llama"), char_tokenizer()
    width = WIDTH["llama"]
    lape_sets = NeuronSets.from_neurons({"aa": [(0, i) for i in range(6)] + [(2, 3)], "bb": [(1, i) for i in range(5)]},
                                        (3, width), {"method": "lape"})
    key_sets = NeuronSets.from_neurons({"aa": [(0, 2), (2, 3), (2, 9)], "bb": [(1, 4), (2, 40)]}, (3, width),
                                       {"method": "keyneurons"})
    doc = next(iter(iter_documents(manifest, "aa", "valid")))
    questions = [_cloze("cloze/aa/0", doc, doc.split(" ")[1], "aa")]
    config = KeyNeuronsRunConfig(random_seeds=2, ppl_tokens_per_language=96, seq_len=32, seed=3)
    res = method_comparison(model, tok, lape_sets, key_sets, None, manifest, tmp_path / "cmp", config, progress=False,
                            questions=questions)
    assert not res.from_cache and res.meta["cache_key"]
    # the same inputs again: served from the folder; another set of LAPE neurons: computed again
    again = method_comparison(model, tok, lape_sets, key_sets, None, manifest, tmp_path / "cmp", config,
                              progress=False, questions=questions)
    assert again.from_cache and again.meta["cache_key"] == res.meta["cache_key"]
    other = NeuronSets.from_neurons({"aa": [(0, 1)], "bb": [(1, 2)]}, (3, width), {"method": "lape"})
    changed = method_comparison(model, tok, other, key_sets, None, manifest, tmp_path / "cmp-other", config,
                                progress=False, questions=questions)
    assert not changed.from_cache and changed.meta["cache_key"] != res.meta["cache_key"]
    res = MethodComparison.load(tmp_path / "cmp")
    assert res.meta["ppl_text"] == {"split": "valid", "dropped_documents": {"aa": 1, "bb": 0}}
    assert res.meta["random_draws"] == 2
    assert [(r["family"], r["language"]) for r in res.effect] == [
        (f, lang) for fam in ("LAPE", "key neurons") for lang in ("aa", "bb") for f in (fam, f"random like {fam}")]
    by = {(r["family"], r["language"]): r for r in res.effect}
    for fam, sets in (("LAPE", lape_sets), ("key neurons", key_sets)):
        for lang in ("aa", "bb"):
            method, rnd = by[(fam, lang)], by[(f"random like {fam}", lang)]
            assert method["neurons_per_layer"] == rnd["neurons_per_layer"] == sets.mask(lang).sum(1).tolist()
            assert rnd["random_of"] == fam and rnd["draws"] == 2
            assert method["own_above_every_random"] in (True, False)
    # the random row's own change, from an independent perplexity run of the same two draws
    text, _ = comparison_text(manifest, tok, ["aa", "bb"], questions, tokens_per_language=96, seq_len=32)
    pcfg = PerplexityConfig(tokens_per_language=96, seq_len=32, seed=3, random_baseline="none")
    owns = []
    for k in range(2):
        r = ppl_matrix(model, text, random_like(key_sets.subset(["aa", "bb"]), seed=3 + k), pcfg, rows=["aa"],
                       progress=False)
        owns.append(r.delta_nll()[0][0])  # row aa, column aa
    rnd = by[("random like key neurons", "aa")]
    assert rnd["own_delta_nll"] == pytest.approx(statistics.fmean(owns), abs=1e-6)
    assert rnd["own_delta_nll_sd"] == pytest.approx(statistics.stdev(owns), abs=1e-6)
    assert all(0 <= r["p_value"] <= 1 and 0 <= r["p_value_layers"] <= 1 for r in res.overlap)
    # the report shows the p-values and the random rows
    from lape import report

    res.save(tmp_path / "run" / "method-comparison")
    from test_registry import fresh, fresh_kinds

    # a new interpreter loads it and its report shows it (the kind was missing from the registry)
    assert fresh_kinds([tmp_path / "run" / "method-comparison"]) == [f"method_comparison {type(res).__name__}"]
    proc = fresh("from lape.cli import main; import sys; sys.exit(main(['-q', 'report', sys.argv[1]]))",
                 str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "no lape artifact" not in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    page = report.write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "p (per layer)" in page and "random like LAPE" in page and "random like key neurons" in page
    assert "valid split, no document holding a cloze question" in page


def test_cli_compare_writes_the_library_comparison(tmp_path):
    """``lape keyneurons compare`` (no test until now): the CLI's folder holds what
    :func:`method_comparison` computes from the same sets, text and settings, and a second CLI run
    is served from it."""
    from lape.cli import main
    from lape.keyneurons.run import KeyNeuronsRunConfig, method_comparison

    tiny_model_folder(tmp_path, docs=(40, 40), valid_share=0.5)
    width = WIDTH["llama"]
    lape_sets = NeuronSets.from_neurons({"aa": [(0, 1), (2, 3)], "bb": [(1, 4)]}, (3, width), {"method": "lape"})
    key_sets = NeuronSets.from_neurons({"aa": [(0, 1), (2, 9)], "bb": [(1, 4), (2, 40)]}, (3, width),
                                       {"method": "keyneurons"})
    lape_sets.save(tmp_path / "lape")
    key_sets.save(tmp_path / "keys")
    args = ["-q", "keyneurons", "compare", "--neurons", str(tmp_path / "lape"), "--keyneurons", str(tmp_path / "keys"),
            "--corpus", str(tmp_path / "corpus.yaml"), "--model", str(tmp_path / "model"), "--out",
            str(tmp_path / "cli"), "--ppl-tokens-per-language", "64", "--seq-len", "32", "--seed", "2"]
    assert main(args) == 0
    cli = MethodComparison.load(tmp_path / "cli")
    config = KeyNeuronsRunConfig(ppl_tokens_per_language=64, seq_len=32, seed=2)
    lib = method_comparison(tiny_model("llama"), char_tokenizer(), lape_sets, key_sets, None, tmp_path / "corpus.yaml",
                            tmp_path / "lib", config, progress=False)
    assert cli.overlap == lib.overlap and cli.sizes == lib.sizes
    assert [(r["family"], r["language"]) for r in cli.effect] == [(r["family"], r["language"]) for r in lib.effect]
    for a, b in zip(cli.effect, lib.effect):
        assert a["own_delta_nll"] == pytest.approx(b["own_delta_nll"], abs=1e-9)
    assert main(args) == 0
    assert MethodComparison.load(tmp_path / "cli").meta["cache_key"] == cli.meta["cache_key"]
