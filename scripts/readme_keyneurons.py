"""The README's key-neuron section (issue #17), from ``scripts/run_keyneurons.sh``'s folders in
the full run: the PCR table for domains and languages against random sets and plain NA, editing
success, cluster prediction, the layer plot and the three methods compared. Imported by
``scripts/readme_results.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

from readme_results import ROOT

from lape.report.markdown import markdown_table


def _copy(src: Path, name: str) -> str | None:
    if not src.is_file():
        return None
    dest = ROOT / "docs" / "figures" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return f"docs/figures/{name}"


def _pcr_rows(kind: str, ev) -> list[list[object]]:
    """The evaluation's family rows (every figure with its 95% interval), prefixed by the question kind."""
    return [[kind, *row] for row in ev.family_rows()]


def keyneurons_section(run: Path) -> str:
    """Markdown for the key-neuron results in ``run`` (empty when the runs are absent)."""
    from lape.keyneurons.attribute import KeyNeuronScores
    from lape.keyneurons.compare import MethodComparison
    from lape.keyneurons.evaluate import FAMILY_HEADER, PREDICTION_HEADER, KeyNeuronEval
    from lape.masks import NeuronSets

    kinds = [k for k in ("domains", "languages") if (run / f"kn-{k}-eval").is_dir()]
    if not kinds:
        return ""
    first = KeyNeuronScores.load(run / f"kn-{kinds[0]}-scores")
    acfg = first.meta.get("config", {})
    out = ["### Key neurons (Chen et al., NA-ICA), built-in model\n",
           f"From `scripts/run_keyneurons.sh`: attribution (m = {acfg.get('steps')}, {acfg.get('templates')} "
           f"template(s) per question, threshold {acfg.get('threshold')}) on the **selection half** of each cluster's "
           "questions, NA-ICA selection (top 20 per question, common neurons removed, NA normalised by the sum of "
           "|scores|), then boost (x2) and suppress (x0) at the last position on the **held-out half**. "
           + "; ".join(text for kind, text in (
               ("domains", "Domains: every MMLU dev+validation question of the six domains (their counts differ: 27 "
                           "to 112)"),
               ("languages", "Languages: 50 cloze questions per language built from its held-out text"))
               if kind in kinds)
           + (". Domain clusters were not re-run with this attribution" if "domains" not in kinds else "") + ".\n",
           f"**What the attribution is.** Gemma 3 normalises each block's MLP output, so the answer probability does "
           f"not change when a layer's activations are scaled: zero-baseline integrated gradients (the paper's) are "
           f"then exactly H_m x gradient x activation and sum to about 0 (the previous README run: median relative "
           f"completeness gap 0.99, 7 of 8 demo questions without a defined normaliser). lape detects this "
           f"(`normalises_mlp_output`) and integrates from each layer's mean activation over reference text of the "
           f"question's language instead; this run computed: *{first.meta.get('method')}*. Each prompt's top "
           f"{acfg.get('validate_top')} neurons by |score| were also set to their baseline one at a time in exact "
           "forward passes; the median Spearman correlation with the scores is in the table.\n"]
    facts, pcr, pred, judged = [], [], [], []
    for kind in kinds:
        scores = KeyNeuronScores.load(run / f"kn-{kind}-scores")
        sets = NeuronSets.load(run / f"kn-{kind}")
        ev = KeyNeuronEval.load(run / f"kn-{kind}-eval")
        comp = scores.meta.get("completeness", {})
        per_q = sets.meta.get("key_neurons_per_question", {})
        answers = ev.summary["answers"][0]
        rho = (scores.meta.get("ranking_check") or {}).get("median_spearman")
        facts.append([kind, ", ".join(sets.labels), sum(scores.meta["questions"].values()), ev.meta.get("questions"),
                      f"{sum(per_q.values()) / max(len(per_q), 1):.1f}", sets.meta.get("common_neurons"),
                      f"{100 * answers['accuracy_unmodified']:.0f}%", scores.meta.get("baseline"),
                      f"{comp.get('median_rel_delta', float('nan')):.2f}",
                      "-" if not rho else f"{rho['value']:.2f} [{rho['low']:.2f}, {rho['high']:.2f}]",
                      sets.meta.get("normaliser_fallbacks"),
                      f"{scores.meta.get('seconds', 0) / max(scores.meta.get('prompts', 1), 1):.1f} s"])
        pcr += _pcr_rows(kind, ev)
        pred += [[kind, *row] for row in ev.prediction_rows()]
        judged += [f"- {kind}: {v['sentence']}" for v in ev.verdicts()]
        draws, bins = (ev.meta.get("config", {}).get(k, 0) for k in ("random_seeds", "activation_bins"))
        source = ev.meta.get("activation_source", "selection questions")
    out.append(markdown_table(["questions", "clusters", "selection questions", "held-out questions", "key neurons per question",
                       "common neurons", "accuracy (held out, unmodified)", "IG baseline",
                       "median completeness gap / abs(P(a) - P(b))", "Spearman vs exact ablation (95% CI)",
                       "normaliser fallbacks", "attribution per prompt"], facts))
    out.append("\nProbability change ratio on the held-out questions: the mean over clusters (and draws), each "
               "figure with its bootstrap 95% interval over questions. `pooled PCR`: one ratio of means over every "
               "prompt of every cluster; `Δlog P`: log P(edited) - log P(unedited) of the right letter (nats). "
               f"Baselines: `na`, plain NA without ICA or common-neuron removal; `random`, the same count per layer "
               f"({draws} draws, SD over draws beside the PCR); `random-act`, also drawn from the key neuron's rank "
               f"bin ({bins} equal-size bins per layer) of mean |activation| at the last position over the {source}; "
               "`activation`, the paper's Activation baseline, per cluster and layer the neurons of highest mean "
               f"activation at the last position over the cluster's {source}, the key neurons' count per layer:\n")
    out.append(markdown_table(["questions", *FAMILY_HEADER[:-1], "edit success (related)"], pcr))
    out.append("\nEach sentence below is computed by `lape`: \"as in the paper\" only where the key neurons' interval "
               "lies above every baseline set's (each random draw counted separately):\n")
    out.append("\n".join(judged) + "\n")
    out.append("\nNeuron-based cluster prediction (rule: the cluster whose key neurons have the highest mean "
               "standardised unmodified activation at the last position; Wilson 95% interval with n = questions):\n")
    out.append(markdown_table(["questions", *PREDICTION_HEADER], pred))
    figs = [(f"kn-{k}-plots/layer_distribution.png", f"kn-{k}-layers.png", f"Key neurons per layer ({k})")
            for k in kinds] + [(f"kn-{k}-plots/accumulated_heatmap.png", f"kn-{k}-heatmap.png",
                                f"Accumulated NA-ICA scores ({k})") for k in kinds]
    for src, name, alt in figs:
        path = _copy(run / src, name)
        if path:
            out.append(f"\n![{alt}]({path})\n")
    if (run / "method-comparison").is_dir():
        res = MethodComparison.load(run / "method-comparison")
        out.append("\n#### Three methods on one neuron space\n")
        out.append("LAPE's 13-language sets, the key neurons of the language clusters, and the neuron view of the "
                   f"monolingual regions (neurons with >= {100 * res.meta.get('region_min_share', 0.05):.0f}% of their "
                   "own weights in the region); overlap against random sets with the same count per layer, with the "
                   "one-sided p-value of an overlap at least as large (hypergeometric per layer, summed):\n")
        out.append(markdown_table(["language", "set A", "set B", "size A", "size B", "overlap", "chance", "x chance", "p"],
                          [[r["language"], r["a"], r["b"], r["size_a"], r["size_b"], r["overlap"], f"{r['chance']:.2f}",
                            f"{r['enrichment']:.1f}", f"{r['p_value_layers']:.2g}"] for r in res.overlap]))
        if res.effect:
            out.append("\nNLL change (nats/token, held-out text) when one method's set for a language is switched "
                       "off, against random sets with the same count per layer switched off instead:\n")
            out.append(markdown_table(["method", "language", "own language", "other languages (mean)", "own hit most",
                                       "own change above every random set"],
                              [[r["family"], r["language"], f"{r['own_delta_nll']:+.3f}", f"{r['others_delta_nll']:+.3f}",
                                "yes" if r["own_hit_most"] else "no",
                                "yes" if r.get("own_above_every_random") else "no"] for r in res.effect]))
    return "\n".join(out) + "\n"
