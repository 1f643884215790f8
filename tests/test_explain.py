"""Neuron cards (``lape explain``): running top-k contexts, written tokens, the page, the CLI.

Every expected value is computed here another way: the top-k by sorting every activation of a
plain forward pass, the firing sums by ``lape record``, the written tokens by writing the norms
out by hand, the page by counting its cards in the DOM Chromium builds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
from tiny_models import char_tokenizer, random_sequences, tiny_model, tiny_model_folder

from lape import record
from lape.errors import LapeError
from lape.explain import (
    ExplainConfig,
    NeuronCards,
    explain,
    explain_summary,
    neuron_table,
    write_page,
)
from lape.explain.lens import written_tokens
from lape.explain.page import cards_json, render_card
from lape.explain.summary import script_share, token_script
from lape.explain.topk import TopContexts, merge_top, top_in_column_order, top_order
from lape.hooks import activation_hooks
from lape.masks import NeuronSets
from lape.space import NeuronSpace

NEURONS = [(0, 3), (0, 17), (1, 0), (2, 5), (2, 47)]
SMALL = ExplainConfig(k=3, before=2, after=1, batch_size=2, top_tokens=5)


def _corpus(seed: int = 0) -> dict[str, list]:
    # the last sequence of each language is padded: padding must never be a context or a count
    return {"aa": random_sequences(5, 12, seed=seed, real_last=7),
            "bb": random_sequences(3, 12, seed=seed + 10, real_last=4)}


def _all_activations(model, space, seqs) -> torch.Tensor:
    """``[S, T, layers, neurons]`` of every sequence, one plain forward each."""
    rows = []
    for s in seqs:
        got = {}

        def grab(layer, act, got=got):
            got[layer] = act.reshape(-1, act.shape[-1]).detach().clone()  # one sequence: [T, neurons]

        with torch.no_grad(), activation_hooks(model, space, grab):
            model(input_ids=s.input_ids[None], attention_mask=s.attention_mask[None])
        rows.append(torch.stack([got[i] for i in range(space.num_layers)], dim=1))
    return torch.stack(rows)


def _brute_top(acts, seqs, neuron, k, before, after):
    """Sorted ``(value, serial, window tokens, window acts)`` of one neuron, the slow way."""
    layer, index = neuron
    found = []
    for s, seq in enumerate(seqs):
        real = int(seq.attention_mask.sum())
        for t in range(1, real):  # the first position (BOS, the attention sink) never counts
            found.append((float(acts[s, t, layer, index]), s * (1 << 20) + t, s, t))
    found.sort(key=lambda x: (-x[0], x[1]))
    out = []
    for value, serial, s, t in found[:k]:
        real = int(seqs[s].attention_mask.sum())
        toks, vals = [], []
        for p in range(t - before, t + after + 1):
            inside = 1 <= p < real
            toks.append(int(seqs[s].input_ids[p]) if inside else -1)
            vals.append(float(acts[s, p, layer, index]) if inside else 0.0)
        out.append((value, serial, toks, vals))
    return out


@pytest.mark.parametrize("family", ["llama", "opt"])  # OPT's ReLU gives exact-zero ties
def test_running_top_k_equals_brute_force_and_firing_sums_equal_record(family):
    model = tiny_model(family)
    space = NeuronSpace.of(model)
    corpus = _corpus()
    neurons, _ = neuron_table(extra=NEURONS)
    cards = explain(model, corpus, neurons, SMALL, progress=False)
    stats = record(model, corpus, progress=False)
    for li, lang in enumerate(corpus):
        acts = _all_activations(model, space, corpus[lang])
        for row, neuron in enumerate(neurons.tolist()):
            want = _brute_top(acts, corpus[lang], neuron, SMALL.k, SMALL.before, SMALL.after)
            c = cards.contexts
            assert c["values"][li, row].tolist() == pytest.approx([w[0] for w in want], rel=1e-5, abs=1e-6)
            assert c["serials"][li, row].tolist() == [w[1] for w in want]
            assert c["tokens"][li, row].tolist() == [w[2] for w in want]
            torch.testing.assert_close(c["acts"][li, row], torch.tensor([w[3] for w in want]), rtol=1e-5, atol=1e-6)
            layer, index = neuron
            assert int(cards.firing["fire_counts"][li, row]) == int(stats.fire_counts[li, layer, index])
            assert float(cards.firing["fire_sums"][li, row]) == pytest.approx(float(stats.fire_sums[li, layer, index]),
                                                                             rel=1e-5, abs=1e-6)
        assert int(cards.firing["token_counts"][li]) == int(stats.token_counts[li])
    if family == "opt":  # the tie rule was exercised: some neuron has several zero activations kept
        assert bool((cards.contexts["values"] == 0).sum(-1).ge(2).any())


def test_the_fast_top_k_breaks_ties_like_the_full_sort():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (50, 40), generator=g).float()  # many ties
    values[:5, :38] = float("-inf")  # rows with fewer real entries than k
    serials = torch.arange(40).expand(50, -1)
    for k in (1, 3, 7):
        assert torch.equal(top_in_column_order(values, k), top_order(values, serials, k))


def test_rank_states_merge_to_the_one_process_top_k():
    """Two ranks' states (every second sequence each), merged, equal one pass over all."""
    model = tiny_model("llama")
    space = NeuronSpace.of(model)
    seqs = random_sequences(6, 10, seed=3)
    columns = {0: torch.tensor([3, 17]), 2: torch.tensor([5])}

    def run(which):
        stat = TopContexts(columns, 4, 2, 1, torch.device("cpu"))
        with torch.no_grad(), activation_hooks(model, space, stat.hook, layers=list(columns)):
            for i in which:
                ids, mask = seqs[i].input_ids[None], seqs[i].attention_mask[None]
                model(input_ids=ids, attention_mask=mask)
                counted = mask.bool().clone()
                counted[:, 0] = False
                stat.add_batch(ids, counted, torch.tensor([i]))
        return stat.sums

    one, r0, r1 = run(range(6)), run(range(0, 6, 2)), run(range(1, 6, 2))
    merged = merge_top([r0, r1], 4)
    for name in merged:
        assert torch.equal(merged[name], one[name]), name
    assert torch.equal(r0["fire_counts"] + r1["fire_counts"], one["fire_counts"])


def _independent_lens(model, family, layer, index):
    """The neuron's direction through the norms, written out per architecture."""
    eps = 1e-6
    if family == "gpt2":
        col = model.transformer.h[layer].mlp.c_proj.weight[index].detach()  # Conv1D: [in, out]
        ln = model.transformer.ln_f
        x = (col - col.mean()) / torch.sqrt(col.var(unbiased=False) + ln.eps)
        return model.lm_head.weight.detach() @ (ln.weight.detach() * x)

    def rms(x, w, plus_one):
        return x / torch.sqrt(x.pow(2).mean() + eps) * ((1 + w) if plus_one else w)

    col = model.model.layers[layer].mlp.down_proj.weight[:, index].detach()
    if family == "gemma3":
        col = rms(col, model.model.layers[layer].post_feedforward_layernorm.weight.detach(), True)
        return model.lm_head.weight.detach() @ rms(col, model.model.norm.weight.detach(), True)
    return model.lm_head.weight.detach() @ rms(col, model.model.norm.weight.detach(), False)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_written_tokens_equal_an_independent_matrix_product(family):
    model = tiny_model(family)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms with non-trivial gains and biases, so that leaving one out fails
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (0.0 if "bias" in name else 1.0))
    space = NeuronSpace.of(model)
    neurons = [(0, 3), (1, 40), (2, 7)]
    got = written_tokens(model, space, neurons, top=6)
    for row, (layer, index) in enumerate(neurons):
        want = _independent_lens(model, family, layer, index)
        hi, lo = want.topk(6), want.topk(6, largest=False)
        assert got.promoted[row].tolist() == hi.indices.tolist()
        assert got.suppressed[row].tolist() == lo.indices.tolist()
        assert got.promoted_scores[row].tolist() == pytest.approx(hi.values.tolist(), rel=1e-3, abs=1e-4)


def test_a_neuron_outside_the_space_is_a_one_line_error():
    model = tiny_model("llama")
    with pytest.raises(LapeError, match=r"^neuron \(3, 0\) is outside this model's neuron space \(layers 0-2, "
                                        r"neurons 0-47\): use neurons made for this model$"):
        explain(model, _corpus(), [(3, 0)], SMALL, progress=False)
    with pytest.raises(LapeError, match=r"neuron \(0, 48\) is outside"):
        written_tokens(model, NeuronSpace.of(model), [(0, 48)])


def _cards(tmp_path=None):
    model = tiny_model("llama")
    sets = NeuronSets(["aa", "bb"], torch.zeros(2, 3, 48, dtype=torch.bool))
    sets.masks[0, 0, 3] = sets.masks[0, 2, 5] = sets.masks[1, 2, 5] = sets.masks[1, 1, 9] = True
    neurons, members = neuron_table({"lape": sets}, extra=[(0, 17)])
    cards = explain(model, _corpus(), neurons, SMALL, memberships=members, out=tmp_path, progress=False)
    return model, cards


def test_cards_json_and_page_hold_one_card_per_neuron(tmp_path):
    _, cards = _cards()
    assert cards.neurons.tolist() == [[0, 3], [0, 17], [1, 9], [2, 5]]
    assert cards.sets_of(cards.row((2, 5))) == ["aa", "bb"] and cards.sets_of(cards.row((0, 17))) == ["listed"]
    page = write_page(cards, char_tokenizer(), tmp_path)
    data = json.loads((tmp_path / "cards.json").read_text(encoding="utf-8"))
    text = page.read_text(encoding="utf-8")
    assert [c["id"] for c in data["cards"]] == ["0:3", "0:17", "1:9", "2:5"]
    assert text.count('<div class="card"') == 4 and text.count('<tr class="row"') == 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from the network
    one = data["cards"][3]
    # the overall top contexts are the per-language ones merged, best first
    per_lang = sorted((c["activation"] for cs in one["per_language"].values() for c in cs), reverse=True)
    assert [c["activation"] for c in one["top"]] == per_lang[:SMALL.k]
    assert all(c["tokens"][c["peak"]] for c in one["top"])
    assert one["firing"][0]["probability"] == pytest.approx(float(cards.firing_probability()[0, 3]), abs=1e-4)


def test_cards_resume_and_skip_when_nothing_changed(tmp_path):
    _, first = _cards(tmp_path / "explain")
    _, again = _cards(tmp_path / "explain")
    assert getattr(again, "from_cache", False) and torch.equal(again.contexts["values"], first.contexts["values"])
    model = tiny_model("llama")
    other = explain(model, _corpus(seed=5), first.neurons, SMALL, memberships=first.memberships,
                    out=tmp_path / "explain", progress=False)  # another corpus: recomputed
    assert not getattr(other, "from_cache", True)
    assert NeuronCards.load(tmp_path / "explain").meta["cache_key"] == other.meta["cache_key"]
    from test_registry import fresh_kinds

    assert fresh_kinds([tmp_path / "explain"]) == ["explain NeuronCards"]  # in a new interpreter too


def test_inline_card_renders_the_same_fragment_as_the_page(tmp_path):
    from lape.explain import card

    model, cards = _cards(tmp_path / "explain")
    inline = card(model, (1, 9), tokenizer=char_tokenizer(), cards=tmp_path / "explain")
    data = cards_json(cards, char_tokenizer())["cards"][cards.row((1, 9))]
    assert inline.to_dict() == data
    assert render_card(data) in inline._repr_html_()


def test_token_scripts_and_summary_from_hand_made_cards():
    assert token_script("▁привет") == "CYRILLIC" and token_script("日本") == "HAN"
    assert token_script("のは") == "HIRAGANA" and token_script("…,") is None
    assert script_share(["дом", "house", "мир", "…"], "ru") == pytest.approx(2 / 3)

    def c(sets, langs, promoted):
        return {"sets": sets, "top": [{"language": x} for x in langs], "promoted": [{"token": t} for t in promoted]}

    data = {"meta": {"languages": ["en", "ru"], "sets": ["ru", "random:ru"]},
            "cards": [c(["ru"], ["ru", "ru"], ["дом", "мир", "x"]), c(["ru"], ["ru", "en"], ["a", "b", "мир"]),
                      c(["random:ru"], ["en", "ru"], ["a", "b"])]}
    rows = {r["set"]: r for r in explain_summary(data)}
    assert rows["ru"]["neurons"] == 2 and rows["ru"]["contexts_all_in_language"] == 0.5
    assert rows["ru"]["promoted_mostly_in_script"] == 0.5
    assert rows["ru"]["mean_promoted_in_script"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert rows["random:ru"]["contexts_all_in_language"] == 0.0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_opens_offline_in_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    _, cards = _cards()
    page = write_page(cards, char_tokenizer(), tmp_path)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1200,900"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", f"file://{page}"], timeout=90,
                         capture_output=True, text=True, check=False).stdout
    assert re.search(r'data-cards="4"', dom), "the page did not run its script or lost cards"
    assert dom.count('class="card open"') == 1  # the first row's card is open
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", f"file://{page}"], timeout=60, capture_output=True, check=False)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_explains_sets_and_listed_neurons_and_refuses_bad_ones(tmp_path, monkeypatch, capsys):
    from lape import load_model
    from lape.artifacts import model_sidecar
    from lape.cli import main

    tiny_model_folder(tmp_path, docs=(30, 30), valid_share=0.3)
    monkeypatch.chdir(tmp_path)
    model, _ = load_model("model")
    sets = NeuronSets(["aa", "bb"], torch.zeros(2, 3, 48, dtype=torch.bool), model_sidecar("neurons", model))
    sets.masks[0, 2, 5] = sets.masks[1, 1, 9] = True
    sets.save(tmp_path / "neurons")
    common = ["--model", "model", "--corpus", "corpus.yaml", "--tokens-per-language", "200", "--seq-len", "32"]
    assert main(["-q", "explain", "neurons", "--neuron", "0:4", *common, "--out", "explain"]) == 0
    data = json.loads((tmp_path / "explain" / "cards.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in data["cards"]] == ["0:4", "1:9", "2:5"] and data["cards"][0]["sets"] == ["listed"]
    assert data["cards"][1]["sets"] == ["bb"] and (tmp_path / "explain" / "index.html").is_file()
    capsys.readouterr()
    for bad, msg in ((["--neuron", "9:0"], "neuron (9, 0) is outside this model's neuron space"),
                     (["--neuron", "x"], "written LAYER:INDEX"),
                     (["stats-nowhere"], "holds no lape result, not neuron sets or regions")):
        assert main(["-q", "explain", *bad, *common, "--out", "explain2"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("lape: error")]
        assert len(errors) == 1 and msg in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "explain2").exists()  # a refused command leaves no folder behind


def test_report_links_the_page_and_shows_each_set_next_to_its_random_control(tmp_path):
    from lape.explain.run import explain_sets
    from lape.report import write_report

    model = tiny_model("llama")
    sets = NeuronSets(["aa", "bb"], torch.zeros(2, 3, 48, dtype=torch.bool))
    sets.masks[0, 0, :6] = sets.masks[1, 2, 10:14] = True
    run = tmp_path / "run"
    cards = explain_sets(model, char_tokenizer(), _corpus(), {"lape": sets}, SMALL, random_control=0,
                         out=run / "explain", progress=False)
    control = [cards.neurons[r].tolist() for r in cards.memberships["random:aa"]]
    assert len(control) == 6 and all(layer == 0 for layer, _ in control)  # same count per layer as lape:aa
    page = write_report(run).read_text(encoding="utf-8")
    assert '<section id="explain">' in page and 'href="explain/index.html"' in page
    rows = re.findall(r"<tr><td class=\"l\">(lape:\w+)</td><td>(\d+)</td>", page)
    assert rows == [("lape:aa", "6"), ("lape:bb", "4")]
