"""Write the results section of README.md from real runs (never by hand).

Reads a demo run (``lape demo``) and, if present, the full acceptance run (all built-in
languages, ``scripts/run_full.sh``: LAPE, perplexity, linguistic regions and the steering runs of
``scripts/run_steering.sh``, whose section ``scripts/readme_steering.py`` writes), copies their
figures to ``docs/figures/`` and replaces the text between
``<!-- RESULTS:START -->`` and ``<!-- RESULTS:END -->`` in README.md with tables naming the
commit the runs came from.

Usage:
    python scripts/readme_results.py --demo runs/demo --full runs/full
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from lape.plots import pct
from lape.report.markdown import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip() or "unknown"


def _copy_figures(run: Path, prefix: str, names: list[str]) -> dict[str, str]:
    dest = ROOT / "docs" / "figures"
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        src = run / "plots" / f"{name}.png"
        if src.is_file():
            shutil.copyfile(src, dest / f"{prefix}-{name}.png")
            out[name] = f"docs/figures/{prefix}-{name}.png"
    return out


def neuron_section(run: Path, prefix: str, title: str) -> str:
    from lape.masks import NeuronSets
    from lape.neurons.stats import ActivationStats
    from lape.report import neuron_summary

    sets = NeuronSets.load(run / "neurons")
    stats = ActivationStats.load(run / "stats")
    rows = neuron_summary(sets)
    tokens = dict(zip(stats.languages, stats.token_counts.tolist()))
    table = markdown_table(["set", "neurons", "bottom third of layers", "top third of layers", "tokens recorded"],
                   [[r["set"], r["neurons"], pct(r["bottom_third"]), pct(r["top_third"]),
                     f"{tokens.get(r['set'], sum(tokens.values())):,}"] for r in rows])
    tps = stats.meta.get("tokens_per_second")
    figs = _copy_figures(run, prefix, ["layer_distribution", "overlap_heatmap", "probability_heatmap"])
    lines = [f"### {title}", "",
             f"{len(stats.languages)} languages, {int(stats.token_counts.sum()):,} tokens recorded at "
             f"**{tps:,.0f} tokens/s** (seq_len {stats.meta['config'].get('seq_len')}, batch "
             f"{stats.meta['config'].get('batch_size')}, 2 CPU cores), LAPE with the paper's defaults "
             f"(top 1% = {int(sets.union().sum())} neurons). Throughput is as measured in this run (other jobs "
             "shared the cores during the full run); `benchmarks/bench_record.py` compares it side by side.", "",
             table, ""]
    lines += [f"![{k}]({v})" for k, v in figs.items()]
    return "\n".join(lines) + "\n"


def ppl_section(run: Path, prefix: str) -> str:
    from lape.evaluate.perplexity import PerplexityResult

    r = PerplexityResult.load(run / "ppl")
    diag, diag_nll, cols = r.diagonal_summary(), r.diagonal_summary("nll"), r.column_summary()
    wins = sum(d["own_above_off_diagonal"] for d in diag)
    hardest = sum(d["own_hit_hardest"] for d in diag)
    hardest_nll = sum(d["own_hit_hardest"] for d in diag_nll)
    above_random = sum(d["own_above_every_random"] for d in diag_nll)
    draws = max((d["random_draws"] for d in diag_nll), default=0)
    col = {c["language"]: c for c in cols}
    table = markdown_table(["deactivated", "base PPL", "own PPL change", "own NLL change", "random sets, own NLL change "
                    f"(mean ± SD, {draws} draws)", "mean off-diagonal NLL change", "hit hardest by (column test)"],
                   [[d["language"], f"{r.base_ppl[r.languages.index(d['language'])]:.1f}",
                     f"{d['own_delta_ppl']:+.1f}", f"{dn['own_delta_nll']:+.3f}",
                     f"{dn['random_own_delta_nll']:+.3f} ± {dn['random_own_delta_nll_sd']:.3f}",
                     f"{dn['off_diagonal_mean_delta_nll']:+.3f}",
                     "own" if col[d["language"]]["own_hit_hardest"] else
                     f"{col[d['language']]['largest_other_row']} ({col[d['language']]['largest_other_delta_nll']:+.3f})"]
                    for d, dn in zip(diag, diag_nll)])
    figs = _copy_figures(run, prefix, ["ppl_heatmaps"])
    tokens = r.meta.get("config", {}).get("tokens_per_language")
    return "\n".join([
        "### Perplexity when a language's neurons are switched off", "",
        f"Held-out text, {tokens} tokens per language. **Row test** (is a set's own language the one it hurts "
        f"most?): yes in **{hardest} of {len(diag)}** rows in PPL and {hardest_nll} of {len(diag)} in NLL; above "
        f"the row's off-diagonal mean in {wins} of {len(diag)}. **Column test** (is a language hurt most by its own "
        f"set, among all rows?): yes in **{sum(c['own_hit_hardest'] for c in cols)} of {len(cols)}** columns. "
        f"**Random control**: the own NLL change exceeds that of every one of {draws} random sets with the same "
        f"counts per layer in {above_random} of {len(diag_nll)} rows (no floor: a +0.01 change counts as it is).", "",
        table, "", *[f"![{k}]({v})" for k, v in figs.items()], ""])


def regions_section(run: Path, prefix: str) -> str:
    """Linguistic regions: sizes, removal (controls and the monolingual matrix), dimension
    dependence, the super weights, forgetting, and the bridge to LAPE neurons."""
    import json
    import math

    from lape import load

    imp = json.loads((run / "importance" / "importance.json").read_text())
    regions = load(run / "regions")
    numel = regions.meta["numel"]
    sizes = regions.meta["sizes"]
    total = sum(sum(v.values()) for v in numel.values())
    size_rows = [[t, f"{sum(numel[t].values()):,}", f"{sum(sizes['core'].get(t, {}).values()):,}",
                  pct(sum(sizes['core'].get(t, {}).values()) / sum(numel[t].values()))] for t in numel]
    cfg = imp["config"]
    lines = ["### Linguistic regions (Zhang et al.)", "",
             f"Importance `theta x sum of gradients` over {', '.join(imp['languages'])} "
             f"({', '.join(f'{k} {v:,}' for k, v in imp['token_counts'].items())} predicted tokens; seq_len "
             f"{cfg['seq_len']}, batch {cfg['batch_size']}; {imp['tokens_per_second']:.0f} tokens/s forward+backward); "
             f"regions = the top/bottom/random {regions.meta['config']['top_rate']:.0%} of every decoder-block tensor "
             f"({total:,} parameters). Core region size per tensor type:", "",
             markdown_table(["tensor type", "entries", "core", "share"], size_rows), ""]
    if (run / "region-ppl").is_dir():
        r = load(run / "region-ppl")
        controls = [c for c in r.control_summary()]
        ctrl_rows = [r_ for r_ in r.rows if not r_.startswith("mono:")]
        table = markdown_table(["language", "PPL", *(f"{c} removed" for c in ctrl_rows)],
                       [[lang, f"{math.exp(b):.1f}", *(f"{math.exp(r.nll[r.rows.index(c)][j]):,.1f}" for c in ctrl_rows)]
                        for j, (lang, b) in enumerate(zip(r.languages, r.base_nll))])
        diag, cols = r.diagonal_summary("nll"), r.column_summary()
        massive_note = r.keep_massive_sentence() or "No massive channel was found, so there is no row with them kept."
        mono = markdown_table(["removed", *r.languages],
                      [[row, *(f"{v:+.3f}" for v in vals)] for row, vals in zip(r.rows, r.delta_nll())
                       if row.startswith("mono:")])
        figs = _copy_figures(run, prefix, ["region_removal"])
        matrices_note = r.matrices_sentence()
        lines += ["#### Removing regions", "",
                  f"Held-out text, {r.meta['config']['tokens_per_language']} tokens per language; removal = "
                  f"{r.meta['removal']}. PPL ratio to the unmodified model, geometric mean over "
                  f"{len(r.languages)} languages: "
                  + ", ".join(f"**{c['row']} x{c['geomean_ppl_ratio']:.3g}** [{c['geomean_low']:.3g}, "
                              f"{c['geomean_high']:.3g}] (>= 2x in {c['languages_doubled']} of {c['languages']})"
                              for c in controls)
                  + " (95% bootstrap intervals over the languages). " + massive_note, "", matrices_note, "",
                  table, "",
                  f"Monolingual regions (NLL change, nats/token): the region's own language is hit hardest in its "
                  f"row in **{sum(d['own_hit_hardest'] for d in diag)} of {len(diag)}**, and each language is hurt "
                  f"most by its own region (column test) in **{sum(c['own_hit_hardest'] for c in cols)} of "
                  f"{len(cols)}**.", "", mono, "", *[f"![{k}]({v})" for k, v in figs.items()], ""]
    if (run / "region-stability").is_dir():
        st = load(run / "region-stability")
        lines += ["#### Are the regions stable?", "",
                  "The regions selected again from two disjoint halves of each language's text (alternate documents; "
                  f"{st.meta['config']['importance']['tokens_per_language']:,} tokens per language and half): Jaccard "
                  "similarity of the two halves' regions, pooled over every tensor, against the exact chance Jaccard "
                  "of random sets of the same sizes:", "",
                  markdown_table(["region", "Jaccard", "chance", "x chance"],
                         [[x["label"], f"{x['jaccard']:.3f}", f"{x['chance']:.4f}",
                           f"{x['jaccard'] / x['chance']:.1f}" if x["chance"] else "–"] for x in st.overall()]), ""]
    if (run / "region-dims").is_dir():
        d = load(run / "region-dims")
        s_ = d.profile.summary()
        figs = _copy_figures(run, prefix, ["region_dimensions"])
        prof = markdown_table(["tensor type", "core on massive channels", "chance", "top channel", "x chance",
                       "top 1% rows hold", "top 1% columns hold"],
                      [[x["type"], pct(x.get("dims_share")), pct(x.get("dims_chance")), x.get("top_channel", "–"),
                        f"{x['top_channel_enrichment']:.1f}" if x.get("top_channel_enrichment") else "–",
                        pct(x["row_top_share"]), pct(x["col_top_share"])] for x in d.profile.to_rows()
                       if x["residual_axis"] is not None])
        lines += ["#### Dimension dependence", "", d.massive.summary_line() + ".",
                  f"The core region puts {pct(s_['dims_share'])} of its residual-axis entries on these channels "
                  f"(chance {pct(s_['dims_chance'])}); the top 1% of rows hold {pct(s_['row_top_share'])} of its "
                  f"entries and the top 1% of columns {pct(s_['col_top_share'])} (uniform: about 1%).", "", prof, "",
                  *[f"![{k}]({v})" for k, v in figs.items()], ""]
    if (run / "region-perturb").is_dir():
        p_ = load(run / "region-perturb")
        rows = [[r_["edit"], f"x{r_['ppl_ratio']:,.3g} [{r_['ppl_ratio_low']:,.3g}, {r_['ppl_ratio_high']:,.3g}]",
                 "yes" if r_["collapses"] else "no",
                 f"{r_['bos_layer_base']:,.0f} -> {r_['bos_layer']:,.0f}",
                 f"{r_['bos_last_base']:,.0f} -> {r_['bos_last']:,.0f}"] for r_ in p_.edit_rows()]
        lines += ["#### Super weights", "", p_.verdict(), "",
                  markdown_table(["edit", "PPL ratio (geometric mean over languages, 95% CI)", "collapses",
                          "first-token h_c after its layer", "after the last layer"], rows), ""]
    if (run / "region-train").is_dir():
        f_ = load(run / "region-train")
        figs = _copy_figures(run, prefix, ["forgetting"])
        rows = [[r_["setting"], f"{r_['frozen_params']:,}",
                 f"{r_['trained_delta_nll']:+.3f} [{r_['trained_low']:+.3f}, {r_['trained_high']:+.3f}]",
                 "yes" if r_["trained_nll_fell"] else "no",
                 f"{r_['others_mean_delta_nll']:+.4f} [{r_['others_low']:+.4f}, {r_['others_high']:+.4f}]"]
                for r_ in f_.forgetting_rows()]
        c = f_.meta["config"]
        lines += ["#### Freezing against forgetting", "",
                  f"{c['steps']} AdamW steps (lr {c['lr']:g}, batch {c['batch_size']} x {c['seq_len']} tokens) on "
                  f"{f_.train_language} text, seeds {', '.join(str(x) for x in f_.seeds)}, decoder blocks trained, the "
                  "region frozen by restoring its values after every step; `magnitude` freezes the top entries of "
                  "each tensor by |theta|, as many as the core has there. NLL change on held-out text (nats/token, "
                  "mean over seeds, bootstrap 95% interval over held-out windows):", "",
                  markdown_table(["frozen", "entries", f"{f_.train_language} (trained)", "trained NLL fell",
                          "mean of the others"], rows), "",
                  f"**{f_.verdict()}**", "",
                  *[f"![{k}]({v})" for k, v in figs.items()], ""]
    elif (run / "region-ppl").is_dir():
        lines += ["#### Freezing against forgetting", "",
                  "Not part of this run (`lape regions train`, the last step of `scripts/run_regions.sh`: 3 seeds x 4 "
                  "settings, about an hour on 2 CPU cores). The earlier README run trained at lr 2e-4, which made the "
                  "trained language worse too (+0.83 nats): it measured perturbation damage, not forgetting, so its "
                  "figures are no longer shown. `lape demo --regions-train-steps 12` runs the test with the lower "
                  "default lr (1e-5) on the demo's small budgets.", ""]
    if (run / "region-bridge").is_dir():
        b = load(run / "region-bridge")
        by = {}
        for r_ in b.rows:
            by.setdefault(r_["set"], {})[r_["region"]] = r_
        rows = [[s, cells["core"]["neurons"], f"{pct(cells['core']['param_share'])} (x{cells['core']['param_enrichment']:.2f})",
                 (f"{pct(cells[f'mono:{s}']['param_share'])} (x{cells[f'mono:{s}']['param_enrichment']:.2f})"
                  if f"mono:{s}" in cells else "–")] for s, cells in by.items()]
        lines += ["#### LAPE neurons and the regions", "",
                  "Share of each LAPE set's neuron weights (down-projection column, gate/up rows) inside a region, and "
                  "its ratio to a random set with the same number of neurons per layer:", "",
                  markdown_table(["LAPE set", "neurons", "in core", "in own monolingual region"], rows), ""]
    return "\n".join(lines) + "\n"


def demo_section(demo: Path, bench_json: str | None = None, demo_note: str = "") -> str:
    """The ``lape demo`` subsection: its neuron sets, stage times, steering, regions and key-neuron
    sentences and the neuron cards."""
    parts: list[str] = []
    if (demo / "stats").is_dir():
        import json

        parts.append(neuron_section(demo, "demo", "`lape demo` (default settings)"))
        # each stage's time when it ran, from its artifact's sidecar (a re-run skips the stage and keeps it)
        stages = {}
        for stage, folder, kind in (("record", "stats", "stats"), ("identify", "neurons", "neurons"),
                                    ("ppl", "ppl", "ppl"), ("steering", "steering", "steering"),
                                    ("importance", "importance", "importance"), ("regions", "regions", "regions"),
                                    ("region-dims", "region-dims", "region_dims"), ("region-ppl", "region-ppl", "region_ppl"),
                                    ("region-perturb", "region-perturb", "region_perturb"),
                                    ("explain", "explain", "explain")):
            sidecar = demo / folder / f"{kind}.json"
            if sidecar.is_file() and json.loads(sidecar.read_text()).get("seconds") is not None:
                stages[stage] = json.loads(sidecar.read_text())["seconds"]
        total = None
        if bench_json:  # benchmarks/bench_demo.py's first run: every stage it ran, and the total
            stages = {}
            for line in Path(bench_json).read_text().splitlines():
                f = json.loads(line)
                if f["benchmark"] == "demo" and f["figure"].startswith("stage "):
                    stages[f["figure"][len("stage "):]] = f["value"]
                if f["benchmark"] == "demo" and f["figure"].startswith("total"):
                    total = f["value"]
        if stages:
            parts.append("Stage times of this demo run: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
                         + (f"; **total {total:.0f} s** with model load and report "
                            "(`benchmarks/bench_demo.py`; target < 600 s)" if total else "") + "."
                         + (f" {demo_note}" if demo_note else "") + "\n")
        if (demo / "steering" / "steering.json").is_file():
            from lape.evaluate.steering_result import SteeringEval

            ev = SteeringEval.load(demo / "steering")
            rows = ev.steered()
            good = [r["target"] for r in rows if r["steered_success"] >= 0.9]
            random = [r["steered_success"] for r in ev.steered("random")]
            parts.append(f"Demo steering ({ev.meta.get('prompts')} `builtin:dev` development prompts per target, "
                         f"the settings' rule, no profile): {len(good)} of {len(rows)} targets at >= 90% success "
                         f"({', '.join(good)})" + (f"; random neurons with the same values: mean "
                                                   f"{pct(sum(random) / len(random))}" if random else "") + ".\n")
        parts.append(demo_methods_note(demo))
        from readme_explain import explain_section

        parts.append(explain_section(demo))
    return "\n".join(parts)


def demo_methods_note(demo: Path) -> str:
    """The demo's regions and key-neuron stages in a few computed sentences: removal with and without
    norm entries, the super-weight verdict, and what the attribution computed."""
    import math

    from lape import load

    bits = []
    if (demo / "region-ppl").is_dir():
        r = load(demo / "region-ppl")
        bits += [f"removing `{m['region']}` multiplies PPL by x{m['geomean_ppl_ratio']:.3g} with its "
                 f"{m['norm_entries']:,} norm entries and by x{m['matrices_geomean_ppl_ratio']:.3g} without them"
                 for m in r.matrices_summary() if math.isfinite(m["geomean_ppl_ratio"])]
    if (demo / "region-perturb").is_dir():
        p_ = load(demo / "region-perturb")
        rows = p_.edit_rows()
        worst = max(rows, key=lambda r_: r_["ppl_ratio"])
        collapsed = [r_["edit"] for r_ in rows if r_["collapses"]]
        bits.append(f"the super-weight test ({len(rows)} edits: zero and x4 on each massive channel's super weight and "
                    "norm scale and on a median channel's) " + (f"collapses the model with {', '.join(collapsed)}"
                                                                 if collapsed else "collapses nothing")
                    + f"; the largest PPL ratio is x{worst['ppl_ratio']:.3g} ({worst['edit']})")
    if (demo / "keyneurons-scores").is_dir():
        from lape.keyneurons.attribute import KeyNeuronScores

        sc = KeyNeuronScores.load(demo / "keyneurons-scores")
        comp, rho = sc.meta.get("completeness", {}), (sc.meta.get("ranking_check") or {}).get("median_spearman")
        bits.append(f"the key-neuron attribution is *{sc.meta.get('method')}* (median relative completeness gap "
                    f"{comp.get('median_rel_delta', float('nan')):.2f}"
                    + (f"; Spearman {rho['value']:.2f} [{rho['low']:.2f}, {rho['high']:.2f}] with exact single-neuron "
                       "ablation" if rho else "") + ")")
    return ("Demo regions and key neurons (built-in model, default settings): " + "; ".join(bits) + ".\n") if bits \
        else ""


def _keyneurons(run: Path) -> str:
    from readme_keyneurons import keyneurons_section

    return keyneurons_section(run)


def _regions(run: Path) -> str:
    return regions_section(run, "regions")


def _steering(run: Path) -> str:
    from readme_steering import steering_section

    return steering_section(run)


# subsections that can be rewritten on their own (--only): heading prefix and writer
SECTIONS = {"keyneurons": ("### Key neurons (Chen et al., NA-ICA)", _keyneurons),
            "regions": ("### Linguistic regions", _regions),
            "steering": ("### Steering the output language", _steering),
            "demo": ("### `lape demo` (default settings)", lambda run: demo_section(run))}


def replace_subsection(name: str, run: Path, writer=None, runs_from: str | None = None) -> None:
    """Rewrite one ``### `` subsection of README.md from ``run``, stamped with the commit, up to the
    next ``### `` or ``## `` heading; the rest of the README is left as it was."""
    heading, default = SECTIONS[name]
    writer = writer or default
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if heading not in text:
        raise SystemExit(f"README.md has no subsection starting {heading!r}")
    start = text.index(heading)
    stops = ("<!-- RESULTS:END -->",) if name == "demo" else ("\n### ", "\n## ", "<!-- RESULTS:END -->")
    ends = [i for i in (text.find(stop, start + 1) for stop in stops) if i >= 0]
    end = min(ends) + (1 if text[min(ends)] == "\n" else 0) if ends else len(text)
    body = writer(run)
    if not body:
        raise SystemExit(f"{run} holds no {name} results")
    first, rest = body.split("\n", 1)
    runs = (f"runs started at commit `{runs_from}`, written at `{_commit()}`" if runs_from and runs_from != _commit()
            else f"runs at commit `{_commit()}`")
    stamp = f"\n_Regenerated on its own (`scripts/readme_results.py --only {name}`) from {runs}._\n"
    readme.write_text(text[:start] + first + "\n" + stamp + rest.rstrip("\n") + "\n\n" + text[end:], encoding="utf-8")
    print(f"README subsection {name!r} rewritten from {run}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--demo", default="runs/demo")
    p.add_argument("--full", default=None)
    p.add_argument("--bench-json", default=None, help="figures of benchmarks/bench_demo.py (--json) for the "
                   "demo's total time")
    p.add_argument("--demo-note", default="", help="a sentence on how the demo was timed (e.g. what else ran)")
    p.add_argument("--runs-from", default=None, help="the commit the runs started at (regenerate_readme.sh "
                   "passes it), when the tables are written at a later one")
    p.add_argument("--only", choices=sorted(SECTIONS), default=None,
                   help="rewrite one subsection from --full (its own commit stamp), leaving the rest of the README")
    args = p.parse_args()
    if args.only:
        run = Path(args.demo if args.only == "demo" else (args.full or "runs/full"))
        writer = (lambda r: demo_section(r, args.bench_json, args.demo_note)) if args.only == "demo" else None
        replace_subsection(args.only, run, writer, args.runs_from)
        return
    runs = (f"runs started at commit `{args.runs_from}`, tables written at `{_commit()}`"
            if args.runs_from and args.runs_from != _commit() else f"runs at commit `{_commit()}`")
    parts = [f"## Results\n\nGenerated by `scripts/readme_results.py` from real {runs} "
             "on the built-in Gemma 3 270M (2 CPU cores).\n"]
    if args.full:
        full = Path(args.full)
        parts.append(neuron_section(full, "full", "Language-specific neurons, all built-in languages"))
        if (full / "ppl").is_dir():
            parts.append(ppl_section(full, "full"))
        if (full / "regions").is_dir():
            parts.append(regions_section(full, "regions"))
        parts.append(_steering(full))
        from readme_keyneurons import keyneurons_section

        parts.append(keyneurons_section(full))
    parts.append(demo_section(Path(args.demo), args.bench_json, args.demo_note))
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + "\n" + "\n".join(parts) + end + tail, encoding="utf-8")
    print(f"README results updated ({len(parts) - 1} sections)")


if __name__ == "__main__":
    main()
