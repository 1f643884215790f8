"""The README's neuron-card section (issue #18), from ``lape demo``'s ``explain/`` folder: per
language, the share of its LAPE neurons whose top contexts (held-out text, all languages) are
all in that language and whose promoted tokens are mostly in its script, each next to random
neurons of the same count per layer, and two example cards. Imported by ``scripts/readme_results.py``."""

from __future__ import annotations

from pathlib import Path

from lape.plots import pct
from lape.report.markdown import markdown_table


def _example(card: dict) -> str:
    top = card["top"][0] if card["top"] else None
    ctx = ""
    if top:
        toks = list(top["tokens"])
        if top["peak"] is not None:
            toks[top["peak"]] = f"[[{toks[top['peak']]}]]"
        ctx = "".join(toks).replace("\n", " ").replace("|", "\\|").strip()
    promoted = ", ".join(f"`{p['token'].strip() or repr(p['token'])}`" for p in card["promoted"][:5])
    return (f"- **{card['id']}** ({', '.join(card['sets'])}; fires most on {card['top_language']}): "
            f"top context ({top['language'] if top else '–'}) \"{ctx}\"; promotes {promoted}")


def explain_section(run: Path) -> str:
    """Markdown for ``run/explain`` (empty when absent)."""
    from lape.explain.page import read_cards_json
    from lape.explain.report import summary_rows

    folder = run / "explain"
    if not (folder / "cards.json").is_file():
        return ""
    data = read_cards_json(folder)
    meta = data["meta"]
    rows = [[r["language"], r["neurons"], pct(r["contexts_all_in_language"]),
             pct(r["control"]["contexts_all_in_language"]) if r["control"] else "–",
             pct(r["promoted_mostly_in_script"]), pct(r["control"]["promoted_mostly_in_script"]) if r["control"] else "–"]
            for r in summary_rows(data)]
    cfg = meta.get("config") or {}
    examples = []
    for r in summary_rows(data):  # the most language-bound neuron of two non-Latin languages
        if r["language"] in ("ru", "ja", "zh", "ar", "ko") and len(examples) < 2:
            members = [c for c in data["cards"] if r["set"] in c["sets"] and c["top"]]
            pure = [c for c in members if all(t["language"] == r["language"] for t in c["top"])]
            if pure:
                examples.append(_example(max(pure, key=lambda c: c["max_activation"] or 0)))
    return ("### Neuron cards (`lape explain`)\n\n"
            f"`lape demo` writes `runs/demo/explain/index.html`: one card per LAPE neuron of the demo languages "
            f"and per neuron of a random control set (same count per layer), with contexts from the held-out "
            f"`{cfg.get('split')}` split ({cfg.get('tokens_per_language')} tokens per language, top {cfg.get('k')} per "
            f"language). Per language, the share of its neurons whose top-{cfg.get('k')} contexts over all "
            "languages are all in that language, and whose top-10 promoted tokens (logit lens of the "
            "down-projection column; tokens with letters) are mostly in its script:\n\n"
            + markdown_table(["language", "neurons", "top contexts all in it", "random", "promoted mostly in its script",
                      "random"], rows)
            + "\n\n" + ("Examples (the firing token in [[ ]]):\n\n" + "\n".join(examples) + "\n" if examples else ""))
