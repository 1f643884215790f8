"""The report's neuron-card section: a link to the offline page and, per language, whether its
neurons are about that language (next to random neurons of the same count per layer when the
cards hold such a control). :data:`SECTIONS` and :data:`TITLES` are collected by :func:`lape.report.all_sections`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..plots import pct
from ..report.html import Raw, ReportContext, esc, facts_list, html_table, section_html
from .page import LENS_CAVEAT, read_cards_json
from .summary import explain_summary

CONTROL_PREFIX = "random:"  # the label prefix of a random control set on the cards


def summary_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per language set: the :func:`~lape.explain.summary.explain_summary` figures of the set and
    of its random control (``None`` without one)."""
    rows = {r["set"]: r for r in explain_summary(data)}
    out = []
    for label, r in rows.items():
        if label.startswith(CONTROL_PREFIX):
            continue
        out.append({**r, "control": rows.get(CONTROL_PREFIX + r["language"])})
    return out


def render_explain(folder: Path, ctx: ReportContext) -> str:
    """Link to ``index.html``; the per-language summary table."""
    data = read_cards_json(folder)
    meta = data["meta"]
    link = os.path.relpath(folder / "index.html", ctx.run)
    facts = facts_list({"page": Raw(f'<a href="{esc(link)}">{esc(link)}</a>'), "neurons": len(data["cards"]),
                    "contexts from": f"{(meta.get('config') or {}).get('split')} split of "
                                     f"{', '.join(meta.get('languages') or [])}",
                    "tokens per language": (meta.get("config") or {}).get("tokens_per_language")})
    rows = [(r["set"], r["neurons"], pct(r["contexts_all_in_language"]),
             pct(r["control"]["contexts_all_in_language"]) if r["control"] else "–",
             pct(r["promoted_mostly_in_script"]),
             pct(r["control"]["promoted_mostly_in_script"]) if r["control"] else "–")
            for r in summary_rows(data)]
    table = html_table(["set", "neurons", "top contexts all in the language", "random", "promoted tokens mostly in its "
                    "script", "random"], rows,
                   caption="Per language set: share of its neurons whose top contexts over all languages are all in "
                           "that language, and whose promoted tokens (logit lens, those with letters) are mostly in its "
                           "script; random: neurons of the same count per layer")
    return section_html(folder.name, "Neuron cards", facts + table + f'<p class="note">{esc(LENS_CAVEAT)}</p>')


SECTIONS = [("explain", render_explain)]
TITLES = {"explain": "Neuron cards"}
