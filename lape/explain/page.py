"""Neuron cards as data and as one offline page: ``cards.json`` and ``index.html``.

:func:`card_data` turns one row of :class:`~lape.explain.cards.NeuronCards` into plain JSON
(token ids decoded); :func:`render_card` renders that as an HTML fragment (the one renderer: the
page and the notebook's inline card both use it); :func:`write_page` writes the JSON export and
a self-contained page (no network, no CDN): a table of every explained neuron, sortable by any
column and filterable by language, layer and set, each row opening its card.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..report.html import esc
from .cards import NeuronCards

PAGE_CONTEXTS_PER_LANGUAGE = 1  # the page shows each language's best context (cards.json keeps all k)
LENS_CAVEAT = ("Written tokens: the neuron's down-projection column read through the final norm and the "
               "unembedding (logit lens); this ignores every later layer.")


def token_texts(tokenizer: Any, ids: Iterable[int]) -> dict[int, str]:
    """Readable text of each token id (``tokenizer.decode([id])``, special tokens kept)."""
    return {int(i): tokenizer.decode([int(i)]) for i in set(ids) if int(i) >= 0}


def _context(tokens: list[int], acts: list[float], value: float, before: int, text: Callable[[int], str],
             language: str) -> dict[str, Any]:
    keep = [j for j, t in enumerate(tokens) if t >= 0]
    return {"language": language, "activation": round(float(value), 4),
            "tokens": [text(tokens[j]) for j in keep], "acts": [round(float(acts[j]), 3) for j in keep],
            "peak": keep.index(before) if before in keep else None}


def card_data(cards: NeuronCards, row: int, text: Callable[[int], str]) -> dict[str, Any]:
    """One neuron's card as JSON-ready data (see the module docstring)."""
    layer, index = cards.neurons[row].tolist()
    c, before = cards.contexts, cards.before
    probs, means = cards.firing_probability()[:, row].tolist(), cards.mean_firing_activation()[:, row].tolist()
    per_language = {}
    for li, lang in enumerate(cards.languages):
        found = [_context(c["tokens"][li, row, j].tolist(), c["acts"][li, row, j].tolist(),
                          c["values"][li, row, j], before, text, lang)
                 for j in range(c["values"].shape[-1]) if c["serials"][li, row, j] >= 0]
        per_language[lang] = found
    merged, lang_of = cards.overall_top(row)
    top = [_context(merged["tokens"][0, j].tolist(), merged["acts"][0, j].tolist(), merged["values"][0, j],
                    before, text, cards.languages[lang_of[j]])
           for j in range(len(lang_of)) if lang_of[j] >= 0]
    w = cards.written
    best = max(range(len(cards.languages)), key=lambda i: probs[i]) if cards.languages else None
    return {
        "id": f"{layer}:{index}", "layer": layer, "index": index, "sets": cards.sets_of(row),
        "firing": [{"language": lang, "probability": round(p, 4), "mean_firing_activation": round(m, 4)}
                   for lang, p, m in zip(cards.languages, probs, means)],
        "top_language": cards.languages[best] if best is not None else None,
        "max_activation": top[0]["activation"] if top else None,
        "top": top, "per_language": per_language,
        "promoted": [{"token": text(t), "score": round(s, 3)}
                     for t, s in zip(w.promoted[row].tolist(), w.promoted_scores[row].tolist())],
        "suppressed": [{"token": text(t), "score": round(s, 3)}
                       for t, s in zip(w.suppressed[row].tolist(), w.suppressed_scores[row].tolist())],
    }


def card_texts(cards: NeuronCards, tokenizer: Any, rows: slice | int = slice(None)) -> Callable[[int], str]:
    """Token id -> text for every token the cards of ``rows`` show (contexts, promoted, suppressed),
    each decoded once."""
    ids = [*cards.contexts["tokens"][:, rows].reshape(-1).tolist(),
           *cards.written.promoted[rows].reshape(-1).tolist(), *cards.written.suppressed[rows].reshape(-1).tolist()]
    texts = token_texts(tokenizer, ids)
    return lambda i: texts.get(int(i), "")


def cards_json(cards: NeuronCards, tokenizer: Any) -> dict[str, Any]:
    """Every card, with the run's identity: what ``cards.json`` holds."""
    text = card_texts(cards, tokenizer)
    meta = {k: cards.meta.get(k) for k in ("model_id", "languages", "token_counts", "config", "window",
                                            "lape_version", "created")}
    return {"meta": {**meta, "lens_caveat": LENS_CAVEAT, "sets": sorted(cards.memberships)},
            "cards": [card_data(cards, r, text) for r in range(len(cards.neurons))]}


# --------------------------------------------------------------------------------------------
# HTML


SHADE_FLOOR = 0.05  # tokens below 5% of the neuron's largest activation are left unshaded


def _tokens_html(ctx: dict[str, Any], scale: float) -> str:
    """The context with each token shaded by its activation relative to ``scale`` (CSS variable
    ``--a``; class ``n`` for negative), the firing token outlined (class ``pk``, its activation as
    a tooltip). Compact, as a page holds many thousands of tokens: unshaded tokens are bare text."""
    parts = []
    for j, (tok, act) in enumerate(zip(ctx["tokens"], ctx["acts"])):
        shown = esc(tok.replace("\n", "⏎")) or "&#8203;"
        a = max(-1.0, min(1.0, act / scale)) if scale > 0 else 0.0
        if j == ctx["peak"]:
            parts.append(f'<i class="pk" style="--a:{abs(a):.2f}" title="{act:.3g}">{shown}</i>')
        elif abs(a) >= SHADE_FLOOR:
            parts.append(f'<i{" class=n" if a < 0 else ""} style="--a:{abs(a):.2f}">{shown}</i>')
        else:
            parts.append(shown)
    return "".join(parts)


def _contexts_html(found: list[dict[str, Any]], scale: float, with_language: bool) -> str:
    rows = "".join(f'<tr><td class="num">{c["activation"]:.3g}</td>'
                   + (f'<td>{esc(c["language"])}</td>' if with_language else "")
                   + f'<td class="ctx">{_tokens_html(c, scale)}</td></tr>' for c in found)
    return f'<table class="ctxs">{rows}</table>' if rows else "<p>no firing context</p>"


def _bars_html(firing: list[dict[str, Any]]) -> str:
    pmax = max((f["probability"] for f in firing), default=0) or 1
    mmax = max((f["mean_firing_activation"] for f in firing), default=0) or 1
    rows = "".join(
        f'<tr><td>{esc(f["language"])}</td>'
        f'<td class="bar"><div style="width:{100 * f["probability"] / pmax:.0f}%"></div>'
        f'<span>{100 * f["probability"]:.1f}%</span></td>'
        f'<td class="bar m"><div style="width:{100 * f["mean_firing_activation"] / mmax:.0f}%"></div>'
        f'<span>{f["mean_firing_activation"]:.3g}</span></td></tr>' for f in firing)
    return ('<table class="bars"><tr><th>language</th><th>firing probability</th>'
            f'<th>mean firing activation</th></tr>{rows}</table>')


def _token_list(items: list[dict[str, Any]]) -> str:
    return " ".join(f'<code title="{i["score"]}">{esc(i["token"]) or "&#8203;"}</code>' for i in items)


def render_card(data: dict[str, Any], per_language: int | None = None) -> str:
    """One card (from :func:`card_data`) as an HTML fragment; ``per_language`` contexts per language
    (``None``: all; the page shows one, ``cards.json`` keeps every one)."""
    scale = float(data.get("max_activation") or 0.0)
    langs = "".join(f'<details><summary>{esc(lang)} ({len(found)})</summary>'
                    f'{_contexts_html(found[:per_language], scale, False)}</details>'
                    for lang, found in data["per_language"].items())
    sets = ", ".join(esc(s) for s in data["sets"]) or "none"
    return (f'<div class="card" id="card-{data["layer"]}-{data["index"]}">'
            f'<h2>neuron {data["layer"]}:{data["index"]}</h2>'
            f'<p><b>sets:</b> {sets} &middot; <b>fires most on:</b> {esc(data["top_language"])} &middot; '
            f'<b>max activation:</b> {scale:.3g}</p>'
            f'<h3>top contexts, all languages</h3>{_contexts_html(data["top"], scale, True)}'
            f'<h3>firing per language</h3>{_bars_html(data["firing"])}'
            f'<h3>what it writes</h3><p><b>promotes:</b> {_token_list(data["promoted"])}</p>'
            f'<p><b>suppresses:</b> {_token_list(data["suppressed"])}</p>'
            f'<p class="note">{esc(LENS_CAVEAT)}</p>'
            f'<h3>top contexts per language</h3>{langs}</div>')


CSS = """body{font:14px system-ui,sans-serif;margin:0;color:#222}header{padding:10px 16px;background:#f4f4f4}
main{display:flex;gap:12px;padding:12px}#list{flex:1 1 55%;overflow:auto;max-height:90vh}
#panel{flex:1 1 45%;overflow:auto;max-height:90vh}table{border-collapse:collapse}
#neurons td,#neurons th{padding:2px 6px;border-bottom:1px solid #ddd}#neurons th{cursor:pointer;background:#eee}
#neurons tr.row:hover{background:#fff3e0;cursor:pointer}.num{text-align:right}
.ctx{white-space:pre}.ctx i{font-style:normal;border-radius:2px;background:rgba(240,120,0,var(--a))}
.ctx i.n{background:rgba(40,110,220,var(--a))}.ctx .pk{outline:2px solid #b00;font-weight:bold}
.ctxs td{padding:1px 4px;vertical-align:top}.bars td{padding:1px 4px}
.bar{position:relative;width:160px}.bar div{background:#f0a050;height:12px}.bar.m div{background:#7aa6e0}
.bar span{position:absolute;left:4px;top:0;font-size:11px}.note{color:#666;font-size:12px}
code{background:#f3f3f3;padding:0 3px;margin:1px;white-space:pre}.card{display:none}.card.open{display:block}
label{margin-right:12px}"""

SCRIPT = """const rows=[...document.querySelectorAll('#neurons tr.row')];
function show(id){document.querySelectorAll('.card.open').forEach(c=>c.classList.remove('open'));
 const c=document.getElementById('card-'+id.replace(':','-'));if(c){c.classList.add('open');}
 document.getElementById('panel').scrollTop=0;}
rows.forEach(r=>r.addEventListener('click',()=>show(r.dataset.id)));
function filter(){const lang=document.getElementById('f-lang').value,set=document.getElementById('f-set').value,
 lo=+document.getElementById('f-lo').value,hi=+document.getElementById('f-hi').value;let n=0;
 rows.forEach(r=>{const ok=(!lang||r.dataset.lang===lang)&&(!set||r.dataset.sets.split('|').includes(set))
 &&+r.dataset.layer>=lo&&+r.dataset.layer<=hi;r.style.display=ok?'':'none';n+=ok;});
 document.getElementById('shown').textContent=n;}
document.querySelectorAll('select,input').forEach(e=>e.addEventListener('input',filter));
document.querySelectorAll('#neurons th').forEach((th,i)=>th.addEventListener('click',()=>{
 const up=th.dataset.dir!=='asc';th.dataset.dir=up?'asc':'desc';const body=th.closest('table').tBodies[0];
 const key=r=>{const t=r.cells[i].dataset.v??r.cells[i].textContent;return isNaN(+t)?t:+t;};
 [...body.rows].sort((a,b)=>{const x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(up?1:-1);})
 .forEach(r=>body.appendChild(r));}));
if(rows.length){show(rows[0].dataset.id);}
window.addEventListener('load',()=>document.body.setAttribute('data-cards',
 document.querySelectorAll('.card').length));"""


def render_page(data: dict[str, Any], title: str) -> str:
    """The self-contained page for :func:`cards_json` data."""
    cards = data["cards"]
    meta = data["meta"]
    layers = [c["layer"] for c in cards] or [0]
    langs = sorted({c["top_language"] for c in cards if c["top_language"]})
    options = lambda xs: "".join(f'<option value="{esc(x)}">{esc(x)}</option>' for x in xs)  # noqa: E731
    body = "".join(
        f'<tr class="row" data-id="{c["id"]}" data-layer="{c["layer"]}" data-lang="{esc(c["top_language"] or "")}" '
        f'data-sets="{esc("|".join(c["sets"]))}"><td data-v="{c["layer"] * 1_000_000 + c["index"]}">{c["id"]}</td>'
        f'<td class="num">{c["layer"]}</td><td>{esc(", ".join(c["sets"]))}</td><td>{esc(c["top_language"] or "")}</td>'
        f'<td class="num">{max(f["probability"] for f in c["firing"]) * 100 if c["firing"] else 0:.1f}</td>'
        f'<td class="num">{c["max_activation"] or 0:.3g}</td>'
        f'<td>{_token_list(c["promoted"][:4])}</td></tr>' for c in cards)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>'
            f'<p>model {esc(meta.get("model_id"))} &middot; {len(cards)} neurons &middot; contexts from the '
            f'{esc((meta.get("config") or {}).get("split"))} split of {esc(", ".join(meta.get("languages") or []))} '
            f'&middot; lape {esc(meta.get("lape_version"))}. Click a row for its card; click a header to sort.</p>'
            f'<p class="note">{esc(LENS_CAVEAT)} Context shading: the neuron\'s activation on each token '
            f'relative to its largest (orange positive, blue negative); the firing token is outlined.</p>'
            f'<label>fires most on <select id="f-lang"><option value="">any</option>{options(langs)}</select></label>'
            f'<label>set <select id="f-set"><option value="">any</option>{options(meta.get("sets") or [])}</select></label>'
            f'<label>layers <input id="f-lo" type="number" value="{min(layers)}" style="width:4em"> to '
            f'<input id="f-hi" type="number" value="{max(layers)}" style="width:4em"></label>'
            f'shown: <span id="shown">{len(cards)}</span></header><main><div id="list"><table id="neurons"><thead><tr>'
            '<th>neuron</th><th>layer</th><th>sets</th><th>fires most on</th><th>max firing %</th>'
            f'<th>max activation</th><th>promotes</th></tr></thead><tbody>{body}</tbody></table></div>'
            f'<div id="panel">{"".join(render_card(c, PAGE_CONTEXTS_PER_LANGUAGE) for c in cards)}</div></main>'
            f'<script>{SCRIPT}</script></body></html>\n')


def write_page(cards: NeuronCards, tokenizer: Any, folder: str | Path, title: str | None = None) -> Path:
    """Write ``folder/cards.json`` and ``folder/index.html`` (each replaced atomically); returns the page."""
    folder = Path(folder)
    data = cards_json(cards, tokenizer)
    # one line: the export of a few hundred cards is tens of megabytes indented
    atomic_write_text(folder / "cards.json", json.dumps(data, ensure_ascii=False, separators=(",", ":"),
                                                        allow_nan=False))
    page = folder / "index.html"
    atomic_write_text(page, render_page(data, title or f"lape neuron cards: {cards.meta.get('model_id')}"))
    return page


def read_cards_json(folder: str | Path) -> dict[str, Any]:
    """The JSON export written by :func:`write_page`."""
    return json.loads((Path(folder) / "cards.json").read_text(encoding="utf-8"))
