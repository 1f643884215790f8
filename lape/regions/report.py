"""The report's linguistic-regions sections: region sizes, removal, dimension dependence, the
super weights (single-weight and norm-scale edits), frozen further pre-training and the LAPE bridge.

Each renderer gets the folder holding one artifact (found by its sidecar's kind) and returns a
``<section>``; :data:`SECTIONS` and :data:`TITLES` are collected by :func:`lape.report.all_sections`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .. import plots
from ..masks import ParamRegions, mono_label, mono_language
from ..plots import pct
from ..report.html import (
    Raw,
    ReportContext,
    esc,
    facts_list,
    fmt_dec,
    html_table,
    lang_tag,
    section_html,
)


def _yes(flag: bool) -> Raw:
    return Raw('<span class="ok">yes</span>' if flag else '<span class="fail">no</span>')


def render_importance(folder: Path, ctx: ReportContext) -> str:
    """What the importance was accumulated on (the sidecar only: the scores are not read)."""
    from .. import artifacts

    meta = artifacts.read_json(folder / "importance.json")
    config = meta.get("config") or {}
    rows = [(Raw(lang_tag(lang)), meta.get("token_counts", {}).get(lang), (meta.get("batches") or {}).get(lang))
            for lang in meta.get("languages") or []]
    scales = [p.get("norm_scale") for p in (meta.get("params") or {}).values() if p.get("is_norm")]
    facts = {"tensors scored": len(meta.get("tensor_names") or []), "split": config.get("split"),
             "norm scales": ", ".join(f"x * ({s}): {scales.count(s)} tensors" for s in dict.fromkeys(scales)
                                      if s) or ("not recorded (scored as θ · G)" if scales else "none scored"),
             "sequence length": config.get("seq_len"), "batch size": config.get("batch_size"),
             "norm weights": config.get("norms"), "seconds": meta.get("seconds"),
             "tokens/s": meta.get("tokens_per_second"), "model dtype": meta.get("model_dtype")}
    body = (facts_list(facts) + html_table(["language", "predicted tokens", "batches"], rows,
                                   caption="Per language: S = (θ − r) · Σ_batches ∂loss/∂θ, signed (float32); r = the "
                                           "removal value: 0, or −1 for x · (1 + w) norm weights, so S = (1 + w) · G "
                                           "there"))
    return section_html(folder.name, "Parameter importance", body)


def render_regions(folder: Path, ctx: ReportContext) -> str:
    """Region sizes per tensor type (summed over layers)."""
    regions = ParamRegions.load(folder)
    meta = regions.meta
    sizes, numel = meta.get("sizes") or {}, meta.get("numel") or {}
    types = list(numel)
    labels = list(regions.labels)
    rows = []
    for t in types:
        total = sum(numel[t].values())
        rows.append((t, total, *(pct(sum((sizes.get(lab) or {}).get(t, {}).values()) / total, 2) for lab in labels)))
    counts = regions.counts()
    config = meta.get("config") or {}
    facts = {"languages": meta.get("languages"), "top rate per tensor": config.get("top_rate"),
             "norm weights selected": config.get("norms"), "random seed": config.get("seed"),
             "block parameters": sum(sum(v.values()) for v in numel.values()),
             "core entries": counts.get("core")}
    body = (facts_list(facts)
            + '<p class="note">Selection is per tensor (the paper\'s released scripts): core = the top entries of '
              "the importance |θ·ΣG| summed over languages; bottom = the smallest; random = a seeded uniform draw; "
              "mono:xx = xx's top entries in no other language's top set.</p>"
            + html_table(["tensor type", "entries", *labels], rows, caption="Share of each tensor type in each region"))
    return section_html(folder.name, "Linguistic regions", body)


def render_removal(folder: Path, ctx: ReportContext) -> str:
    """Perplexity with each region removed: controls and the monolingual matrix."""
    from .ablate import RegionPerplexity

    res = RegionPerplexity.load(folder)
    fig = ctx.figure(plots.region_removal(res), "region_removal",
                     "NLL change per evaluated language when a region is removed (left: core and its controls; "
                     "right: monolingual regions)")
    control_rows = [r for r in res.rows if not mono_language(r)]
    ppl = html_table(["language", "PPL", *(f"PPL, {r} removed" for r in control_rows)],
                 [(Raw(lang_tag(lang)), fmt_dec(math.exp(b)),
                   *(fmt_dec(math.exp(res.nll[res.rows.index(r)][j])) for r in control_rows))
                  for j, (lang, b) in enumerate(zip(res.languages, res.base_nll))],
                 caption="Perplexity per language, unmodified and with each control row removed")
    controls = html_table(["removed", "entries", "norm entries", "PPL ratio (geometric mean)", "95% interval",
                           "min", "max", "languages ≥ 2x"],
                      [(c["row"], c["entries"], c.get("norm_entries"), fmt_dec(c["geomean_ppl_ratio"], 3),
                        f"{c['geomean_low']:.3g} – {c['geomean_high']:.3g}",
                        fmt_dec(c["min_ppl_ratio"], 3), fmt_dec(c["max_ppl_ratio"], 3),
                        f"{c['languages_doubled']} / {c['languages']}")
                       for c in res.control_summary()],
                      caption="PPL with the region removed / unmodified (interval: bootstrap over the languages)")
    parts = [facts_list({"evaluated languages": len(res.languages), "removal": res.meta.get("removal"),
                     "tokens per language": (res.meta.get("config") or {}).get("tokens_per_language")}),
             fig, '<div class="row">' + controls + ppl + "</div>"]
    matrices = res.matrices_summary()
    if matrices:
        parts.append(html_table(
            ["region", "entries", "norm entries", "PPL ratio", "PPL ratio without its norm entries",
             "share of log PPL ratio without them"],
            [(m["region"], m["entries"], m["norm_entries"], fmt_dec(m["geomean_ppl_ratio"], 3),
              fmt_dec(m["matrices_geomean_ppl_ratio"], 3), pct(m["matrices_share"], 1)) for m in matrices],
            caption="What a region's norm entries carry: each region removed whole and as REGION-matrices "
                    "(its weight-matrix entries only); geometric means over languages"))
    diag, cols = res.diagonal_summary("nll"), res.column_summary()
    if diag:
        parts.append('<div class="row">' + html_table(
            ["region", "own Δ NLL", "mean Δ NLL of the others", "own hit hardest (row)"],
            [(d["row"], fmt_dec(d["own_delta_nll"], 3, True), fmt_dec(d["off_diagonal_mean_delta_nll"], 3, True),
              _yes(d["own_hit_hardest"])) for d in diag], caption="Row test: what a monolingual region's removal hurts")
            + html_table(["language", "own region's Δ NLL", "largest other region", "its Δ NLL", "own hurts most (column)"],
                     [(c["language"], fmt_dec(c["own_delta_nll"], 3, True), c["largest_other_row"],
                       fmt_dec(c["largest_other_delta_nll"], 3, True), _yes(c["own_hit_hardest"])) for c in cols],
                     caption="Column test: which monolingual region hurts a language most") + "</div>")
    sentences = " ".join(s for s in (res.keep_massive_sentence(), res.matrices_sentence()) if s)
    parts.append(f'<p class="note">{esc(res.summary_line())}' + (f"<br>{esc(sentences)}" if sentences else "") + "</p>")
    return section_html(folder.name, "Removing regions", "".join(parts))


def render_stability(folder: Path, ctx: ReportContext) -> str:
    """Split-half stability: Jaccard between the regions selected on two disjoint halves of the text."""
    from .stability import ALL, RegionStability

    res = RegionStability.load(folder)
    overall = html_table(["region", "entries (half 1)", "entries (half 2)", "shared", "Jaccard", "chance", "above chance"],
                     [(r["label"], r["size_a"], r["size_b"], r["intersection"], fmt_dec(r["jaccard"], 3),
                       fmt_dec(r["chance"], 4), pct(r["above_chance"], 1)) for r in res.overall()],
                     caption="All block tensors pooled: |A ∩ B| / |A ∪ B| of the regions from the two halves")
    labels = [r["label"] for r in res.overall()]
    cells = {(r["type"], r["label"]): r for r in res.rows}
    types = [t for t in dict.fromkeys(r["type"] for r in res.rows) if t != ALL]
    by_type = html_table(["tensor type", *labels],
                     [(t, *(f"{fmt_dec(cells[t, lab]['jaccard'], 3)} ({fmt_dec(cells[t, lab]['chance'], 4)})"
                            if (t, lab) in cells else "–" for lab in labels)) for t in types],
                     caption="Jaccard per tensor type (chance in brackets)", left=1)
    note = ("Importance and regions were computed on each half of every language's text (alternate documents) "
            "with the same settings. Chance: the exact expected Jaccard of independent uniform draws of the "
            "same sizes in every tensor; above chance = (J − chance) / (1 − chance).")
    body = (f'<p class="note">{note}</p>' + '<div class="row">' + overall + by_type + "</div>"
            + f'<p class="note">{res.summary_line()}</p>')
    return section_html(folder.name, "Split-half stability of the regions", body)


def render_dims(folder: Path, ctx: ReportContext) -> str:
    """Massive activation dimensions and where the core region sits."""
    from ..plots.regions import dimension_figure
    from .dims import RegionDims

    res = RegionDims.load(folder)
    fig = ctx.figure(dimension_figure(res.profile, res.massive), "region_dimensions",
                     f"Where the {res.profile.label} region sits along the residual stream, per tensor type "
                     "(entries per hidden channel over a uniform spread; massive channels marked)")
    s = res.profile.summary()
    facts = {"massive channels": res.massive.dims or "none", "massive": f"peak above {res.massive.ratio:g}x its layer's median channel peak",
             f"{res.profile.label} entries on them": pct(s["dims_share"], 2),
             "share of all entries on them (chance)": pct(s["dims_chance"], 2),
             "top 1% rows hold": pct(s["row_top_share"], 2), "top 1% columns hold": pct(s["col_top_share"], 2)}
    rows = [(r["type"], r["residual_axis"], pct(r.get("dims_share"), 2), pct(r.get("dims_chance"), 2),
             r.get("top_channel"), fmt_dec(r.get("top_channel_enrichment"), 1), pct(r["row_top_share"], 2),
             pct(r["col_top_share"], 2)) for r in res.profile.to_rows()]
    table = html_table(["tensor type", "residual axis", "on massive dims", "chance", "top channel", "its enrichment",
                    "top 1% rows", "top 1% columns"], rows, caption=f"{res.profile.label} region per tensor type")
    body = facts_list(facts) + fig + table + f'<p class="note">{res.massive.summary_line()}</p>'
    return section_html(folder.name, "Dimension dependence", body)


def render_perturb(folder: Path, ctx: ReportContext) -> str:
    """Super weights of the massive channels and the norm scales that set them, zeroed and scaled,
    against a median channel: PPL and the first token's value on each channel."""
    from ..plots.regions import superweight_figure
    from .perturb import RegionPerturb

    res = RegionPerturb.load(folder)

    def entry(t: str, index: list[int]) -> str:
        return f"{t.removesuffix('.weight')}[{', '.join(map(str, index))}]"

    def writer(c) -> str:
        if not c.branches:
            return "–"
        t, b = max(c.branches.items(), key=lambda kv: abs(kv[1]["value"]))
        return f"{t.removesuffix('.weight')}{' via ' + b['norm'].removesuffix('.weight') if b['norm'] else ''} ({b['value']:.4g})"

    cands = html_table(["channel", "layer", "super weight", "a_j*", "W[c, j*]", "a_j* W[c, j*]", "Σ_j a_j W[c, j]",
                    "branch writing c most", "norm scale of c", "control", "control weight", "its a_j W"],
                   [(c.dim, c.layer, entry(c.tensor_type, c.index), fmt_dec(c.activation, 3), fmt_dec(c.weight, 4),
                     fmt_dec(c.contribution, 3), fmt_dec(c.output, 3), writer(c), fmt_dec(c.norm_scale, 1),
                     c.control_dim, entry(c.tensor_type, c.control_index), fmt_dec(c.control_contribution, 3))
                    for c in res.candidates], left={0, 2, 7, 10},
                   caption="Per massive channel c: the down-projection entry j* = argmax_j |a_j W[c, j]| at the "
                           "first token in the layer where c becomes massive, and the median channel's entry")
    last = len(res.base_bos) - 1
    edits = html_table(["edit", "PPL ratio (geometric mean)", "95% interval", "min", "max", "collapses",
                    "first-token h_c after layer l: unedited", "edited", f"after layer {last}: unedited", "edited"],
                   [(r["edit"], fmt_dec(r["ppl_ratio"], 3), f"{r['ppl_ratio_low']:.3g} – {r['ppl_ratio_high']:.3g}",
                     fmt_dec(r["ppl_ratio_min"], 3), fmt_dec(r["ppl_ratio_max"], 3),
                     _yes(r["collapses"]), fmt_dec(r["bos_layer_base"], 1), fmt_dec(r["bos_layer"], 1),
                     fmt_dec(r["bos_last_base"], 1), fmt_dec(r["bos_last"], 1)) for r in res.edit_rows()],
                   caption=f"Each edit (zero, or x{res.factor:g}) against the unedited model (interval: bootstrap over "
                           "the languages); h_c is the residual stream of the massive channel c the edit belongs to")
    ppl = html_table(["edit", *(Raw(lang_tag(lang)) for lang in res.languages)],
                 [("none", *(fmt_dec(math.exp(v)) for v in res.base_nll)),
                  *((e.label(res.factor), *(fmt_dec(math.exp(v) if v < 700 else math.inf) for v in row))
                    for e, row in zip(res.edits, res.nll))], caption="Perplexity per language")
    fig = ctx.figure(superweight_figure(res), "superweights",
                     "First-token |h| on each massive channel after every layer, unedited and under each edit")
    config = res.meta.get("config") or {}
    facts = {"massive channels": [c.dim for c in res.candidates], "probe token": res.probe,
             "scale edit": f"x{res.factor:g}", "collapse": f"PPL above {res.collapse_ratio:g}x the unedited model's",
             "languages": len(res.languages), "tokens per language": config.get("tokens_per_language")}
    body = (facts_list(facts) + f'<p class="note">{res.verdict()}</p>' + cands + edits + fig + ppl)
    return section_html(folder.name, "Dimension dependence: super weights", body)


def render_forgetting(folder: Path, ctx: ReportContext) -> str:
    """Further pre-training on one language with a region frozen: what the others forget."""
    from ..plots.regions import forgetting_figure
    from .forgetting import RegionTrain

    res = RegionTrain.load(folder)
    fig = ctx.figure(forgetting_figure(res), "forgetting",
                     f"NLL change per language after continued pre-training on {res.train_language}, per setting "
                     f"(mean over {len(res.seeds)} seeds, 95% bootstrap intervals over held-out windows)")

    def iv(r: dict, value: str, low: str, high: str) -> str:
        return f"{fmt_dec(r[value], 3, True)} [{fmt_dec(r[low], 3, True)}, {fmt_dec(r[high], 3, True)}]"

    rows = res.forgetting_rows()
    table = html_table(["setting", "frozen entries", f"Δ NLL {res.train_language} [95%]", "fell",
                    "mean Δ NLL of the others [95%]", "final loss"],
                   [(r["setting"], r["frozen_params"], iv(r, "trained_delta_nll", "trained_low", "trained_high"),
                     _yes(r["trained_nll_fell"]), iv(r, "others_mean_delta_nll", "others_low", "others_high"),
                     fmt_dec(r["final_loss"], 3)) for r in rows],
                   caption="Forgetting (nats/token; positive: worse than before training; "
                           "magnitude: the largest |θ| entries, as many per tensor as the core)")
    langs = html_table(["setting", *res.languages],
                   [(s, *(iv(r, "delta_nll", "low", "high") for r in res.interval_rows()
                          if r["setting"] == s and r["language"] != "others")) for s in res.settings],
                   caption="Δ NLL per language [95% interval]")
    config = res.meta.get("config") or {}
    facts = {"trained language": res.train_language, "seeds": res.seeds, "steps": config.get("steps"),
             "batch": config.get("batch_size"), "sequence length": config.get("seq_len"), "lr": config.get("lr"),
             "seconds per step": res.meta.get("seconds_per_step"),
             f"{res.train_language} NLL fell": _yes(res.trained_nll_fell())}
    return section_html(folder.name, "Freezing against forgetting",
                    facts_list(facts) + f"<p><strong>{esc(res.verdict())}</strong></p>" + fig
                    + '<div class="row">' + table + langs + "</div>" + f'<p class="note">{res.summary_line()}</p>')


def render_bridge(folder: Path, ctx: ReportContext) -> str:
    """The share of each neuron set's weights in each region, against chance."""
    from .bridge import RegionBridge

    res = RegionBridge.load(folder)
    by_set: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in res.rows:
        by_set[r["set"]][r["region"]] = r
    regions = list(dict.fromkeys(r["region"] for r in res.rows))
    shown = [g for g in regions if g in ("core", "random", "bottom")]
    rows = []
    for s, cells in by_set.items():
        own = cells.get(mono_label(s))
        rows.append((s, next(iter(cells.values()))["neurons"],
                     *(f"{pct(cells[g]['param_share'], 2)} (x{fmt_dec(cells[g]['param_enrichment'], 2)})" for g in shown),
                     f"{pct(own['param_share'], 2)} (x{fmt_dec(own['param_enrichment'], 2)})" if own else "–"))
    table = html_table(["neuron set", "neurons", *(f"in {g}" for g in shown), "in own mono region"], rows,
                   caption="Share of each set's neuron weights (down column, gate/up rows) in a region, and its "
                           "ratio to a random set with the same count per layer")
    return section_html(folder.name, "LAPE neurons and regions", table)


SECTIONS = [("importance", render_importance), ("regions", render_regions), ("region_stability", render_stability),
            ("region_ppl", render_removal), ("region_dims", render_dims),
            ("region_perturb", render_perturb), ("region_train", render_forgetting), ("region_bridge", render_bridge)]
TITLES = {"importance": "Importance", "regions": "Regions", "region_stability": "Region stability",
          "region_ppl": "Region removal", "region_dims": "Dimensions", "region_perturb": "Super weights",
          "region_train": "Forgetting", "region_bridge": "Neurons x regions"}
