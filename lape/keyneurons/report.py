"""The report's key-neuron sections: the boost/suppress evaluation (PCR, editing success,
cluster prediction, against random sets and plain NA) and the cross-method comparison.
:data:`SECTIONS` is appended to :data:`lape.report.SECTIONS` by :func:`lape.report.all_sections`."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..report import ReportContext, _dec, _facts, _section, _table


def render_keyneuron_eval(folder: Path, ctx: ReportContext) -> str:
    """PCR, editing success and cluster prediction per set family."""
    from .evaluate import KeyNeuronEval

    ev = KeyNeuronEval.load(folder)
    answers = ev.summary["answers"][0]
    facts = _facts({"clusters": ", ".join(ev.clusters), "held-out questions": ev.meta.get("questions"),
                    "prompts": answers["prompts"], "unmodified accuracy": f"{100 * answers['accuracy_unmodified']:.1f}%",
                    "mean P(right letter)": f"{answers['mean_prob_unmodified']:.3f}",
                    "boost factor": ev.meta.get("config", {}).get("boost")})
    rows = [(r["family"], r["op"], r["draws"], f"{_dec(r['pcr'], 2)}" + (f" ± {_dec(r['pcr_sd'], 2)}" if r["draws"] > 1 else ""),
             f"{r['related_change']:+.1f}%", f"{r['unrelated_change']:+.1f}%", f"{100 * r['edit_success']:.1f}%")
            for r in ev.family_summary()]
    pcr = _table(["family", "edit", "draws", "PCR", "related change", "unrelated change", "edit success"], rows, left=2,
                 caption="Mean over clusters of the probability change ratio |related| / |unrelated| (percentage change "
                         "of the right letter's probability), and the share of related prompts flipped wrong->right "
                         "(boost) or right->wrong (suppress); random: same count per layer, mean ± SD over draws")
    pred = _table(["set family", "accuracy", "chance"],
                  [(r["family"], f"{100 * r['accuracy']:.1f}%", f"{100 * r['chance']:.1f}%") for r in ev.summary["prediction"]],
                  caption="Neuron-based cluster prediction: " + ev.meta.get("prediction_rule", ""))
    return _section(folder.name, "Key neurons: boost and suppress", facts + pcr + pred)


def render_comparison(folder: Path, ctx: ReportContext) -> str:
    """Overlap of the three methods' sets against chance, and the effect of switching each off."""
    from .compare import MethodComparison

    res = MethodComparison.load(folder)
    over = _table(["language", "set A", "set B", "|A|", "|B|", "overlap", "chance", "x chance"],
                  [(r["language"], r["a"], r["b"], r["size_a"], r["size_b"], r["overlap"], _dec(r["chance"], 2),
                    _dec(r["enrichment"], 1)) for r in res.overlap], left=3,
                  caption="Neurons shared by two methods' sets for one language, against random sets with the same "
                          "count per layer")
    body = over
    if res.effect:
        body += _table(["method", "language", "own ΔNLL", "others' mean ΔNLL", "own hit most"],
                       [(r["family"], r["language"], f"{r['own_delta_nll']:+.3f}", f"{r['others_delta_nll']:+.3f}",
                         "yes" if r["own_hit_most"] else "no") for r in res.effect], left=2,
                       caption="NLL change (nats/token) on held-out text when one method's set for a language is "
                               "switched off")
        body += ctx.figure(plots.method_effects(res.effect), "method_effects",
                           "Own-language vs other languages' NLL change per method and language")
    return _section(folder.name, "Three methods on one neuron space", body)


SECTIONS = [("keyneuron_eval", render_keyneuron_eval), ("method_comparison", render_comparison)]
TITLES = {"keyneuron_eval": "Key neurons", "method_comparison": "Methods compared"}
