"""The report's key-neuron sections: the boost/suppress evaluation (PCR, editing success,
cluster prediction, against random sets and plain NA) and the cross-method comparison.
:data:`SECTIONS` and :data:`TITLES` are collected by :func:`lape.report.all_sections`."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import plots
from ..report.html import ReportContext, esc, facts_list, fmt_dec, html_table, section_html


def render_keyneuron_eval(folder: Path, ctx: ReportContext) -> str:
    """PCR, pooled PCR, log-probability difference, editing success and cluster prediction per set
    family, each with its 95% interval, and the judging sentences."""
    from .evaluate import FAMILY_HEADER, PREDICTION_HEADER, KeyNeuronEval

    ev = KeyNeuronEval.load(folder)
    answers = ev.summary["answers"][0]
    cfg = ev.meta.get("config", {})
    facts = facts_list({"clusters": ", ".join(ev.clusters), "held-out questions": ev.meta.get("questions"),
                    "prompts": answers["prompts"], "unmodified accuracy": f"{100 * answers['accuracy_unmodified']:.1f}%",
                    "mean P(right letter)": f"{answers['mean_prob_unmodified']:.3f}",
                    "boost factor": cfg.get("boost"),
                    "activation baselines from": f"{ev.meta.get('activation_source')} "
                                                 f"({ev.meta.get('activation_prompts')} prompts)",
                    "intervals": ev.meta.get("intervals", "")})
    pcr = html_table(FAMILY_HEADER, ev.family_rows(), left=2,
                 caption="Mean over clusters (and draws) with its bootstrap 95% interval over questions. PCR: the mean "
                         "over clusters of |related| / |unrelated| percentage change of the right letter's probability; "
                         "pooled PCR: one ratio of means over every prompt of every cluster; Δlog P: log P(edited) - "
                         "log P(unedited) of the right letter (nats); edit success: related prompts flipped "
                         "wrong->right (boost) or right->wrong (suppress). random: same count per layer; random-act: "
                         "also the same rank bin of mean |activation| (" + str(ev.meta.get("activation_matching", ""))
                         + "); activation: " + str(ev.meta.get("activation_baseline", "")) + "; SD over draws where "
                         "there are several")
    judged = "".join(f"<p>{esc(v['sentence'])}</p>" for v in ev.verdicts())
    pred = html_table(PREDICTION_HEADER, ev.prediction_rows(),
                  caption="Neuron-based cluster prediction (Wilson 95% interval, n = questions): "
                          + ev.meta.get("prediction_rule", ""))
    return section_html(folder.name, "Key neurons: boost and suppress", facts + pcr + judged + pred)


def _selection_fallbacks(scores, ctx: ReportContext) -> dict[str, str]:
    """``{"normaliser fallbacks in SEL/": "k of n questions (normaliser abs)"}`` for every selection in
    the run made from these scores (its sidecar names them)."""
    from .. import artifacts

    out, ident = {}, scores.identity()
    for sidecar in sorted(Path(ctx.run).glob("*/neurons.json")):
        meta = artifacts.read_json(sidecar)
        if "normaliser_fallbacks" in meta and meta.get("source_scores") == ident:
            out[f"normaliser fallbacks in {sidecar.parent.name}/ ({meta.get('normaliser')})"] = (
                f"{meta['normaliser_fallbacks']} of {meta.get('questions')} questions")
    return out


def render_keyneuron_scores(folder: Path, ctx: ReportContext) -> str:
    """What the attribution computed (integrated gradients only where completeness holds), its
    completeness, the ranking check against exact ablation and how often each normaliser is defined."""
    from .attribute import COMPLETENESS_OK, KeyNeuronScores

    sc = KeyNeuronScores.load(folder)
    comp, check = sc.meta.get("completeness") or {}, sc.meta.get("ranking_check") or {}
    total = torch.cat([sc.get(c, "total") for c in sc.clusters])
    signed_bad = int((total <= 0).sum())
    spearman = check.get("median_spearman")
    cfg = sc.meta.get("config") or {}
    facts = facts_list({
        "computed": sc.meta.get("method"),
        "baseline": f"{sc.meta.get('baseline')} (asked: {cfg.get('baseline')})",
        "block normalises its MLP output": sc.meta.get("normalises_mlp_output"),
        "completeness, median |Σ scores − (P(a) − P(b))| / |P(a) − P(b)|":
            f"{fmt_dec(comp.get('median_rel_delta'), 3)} (90th percentile {fmt_dec(comp.get('p90_rel_delta'), 2)}; "
            f"holds below {COMPLETENESS_OK}: {'yes' if comp.get('holds') else 'no'})",
        "ranking vs exact single-neuron ablation (median Spearman over prompts, top "
        f"{cfg.get('validate_top')} by |score|)":
            "not checked" if not spearman else
            f"{fmt_dec(spearman['value'], 2)} [{fmt_dec(spearman['low'], 2)}, {fmt_dec(spearman['high'], 2)}] over "
            f"{check.get('prompts')} prompts",
        "questions whose signed Z ≤ 0 (the paper's normaliser falls back)": f"{signed_bad} of {total.numel()}",
        **_selection_fallbacks(sc, ctx),
        "prompts": sc.meta.get("prompts"), "steps": cfg.get("steps"), "templates": cfg.get("templates")})
    return section_html(folder.name, "Key neurons: attribution", facts)


def render_comparison(folder: Path, ctx: ReportContext) -> str:
    """Overlap of the three methods' sets against chance (with hypergeometric p-values), and the
    effect of switching each off next to size-matched random sets."""
    from .compare import MethodComparison

    def p(v: float | None) -> str:
        return "–" if v is None else f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"

    def own(r: dict) -> str:
        sd = r.get("own_delta_nll_sd")
        return f"{r['own_delta_nll']:+.3f}" + (f" ± {sd:.3f}" if sd is not None and sd == sd else "")

    res = MethodComparison.load(folder)
    over = html_table(["language", "set A", "set B", "|A|", "|B|", "overlap", "chance", "x chance", "p", "p (per layer)"],
                  [(r["language"], r["a"], r["b"], r["size_a"], r["size_b"], r["overlap"], fmt_dec(r["chance"], 2),
                    fmt_dec(r["enrichment"], 1), p(r.get("p_value")), p(r.get("p_value_layers"))) for r in res.overlap],
                  left=3,
                  caption="Neurons shared by two methods' sets for one language, against random sets with the same "
                          "count per layer; p: one-sided hypergeometric p-value of at least this overlap, drawing "
                          "from all layers x neurons (p) or keeping each set's count per layer (p per layer)")
    body = over
    if res.effect:
        text = res.meta.get("ppl_text") or {}
        where = f" ({text['split']} split, no document holding a cloze question's sentence)" if text else ""
        body += html_table(["method", "language", "own ΔNLL", "others' mean ΔNLL", "own hit most", "own above every random"],
                       [(r["family"], r["language"], own(r), f"{r['others_delta_nll']:+.3f}",
                         "yes" if r["own_hit_most"] else "no",
                         {True: "yes", False: "no"}.get(r.get("own_above_every_random"), "")) for r in res.effect],
                       left=2,
                       caption=f"NLL change (nats/token) on held-out text{where} when one method's set for a language "
                               "is switched off; random like X: random neurons with the same count per layer as X's "
                               f"set, mean ± SD over {res.meta.get('random_draws', 0)} draws")
        body += ctx.figure(plots.method_effects(res.effect), "method_effects",
                           "Own-language vs other languages' NLL change per method (and its size-matched random sets) "
                           "and language")
    return section_html(folder.name, "Three methods on one neuron space", body)


SECTIONS = [("keyneuron_scores", render_keyneuron_scores), ("keyneuron_eval", render_keyneuron_eval),
            ("method_comparison", render_comparison)]
TITLES = {"keyneuron_scores": "Attribution", "keyneuron_eval": "Key neurons", "method_comparison": "Methods compared"}
