"""The HTML pieces every report section is built from (escaping, cell formatting, tables, fact
lists, sections), the figure files, and :class:`ReportContext`, what a section renderer gets.

Method packages build their report sections from these; :mod:`lape.report` assembles the page.
This module loads no artifact and no model.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import artifacts
from ..neurons.stats import ActivationStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_DPI = 120  # report and README figures: sharp on screen, ~100 kB each


# --------------------------------------------------------------------------------------------
# figure files


def render_figure(fig: Figure) -> tuple[bytes, bytes]:
    """PNG and SVG bytes of a figure, without dates or tool URLs, so re-runs give equal files."""
    import matplotlib

    png, svg = io.BytesIO(), io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "lape", "svg.fonttype": "path"}):
        # "tight" also keeps legends placed outside the axes inside the image
        fig.savefig(png, format="png", dpi=PNG_DPI, metadata={"Software": None}, bbox_inches="tight",
                    pad_inches=0.08)
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight",
                    pad_inches=0.08)
    return png.getvalue(), svg.getvalue()


def write_figure(png: bytes, svg: bytes, path_stem: Path) -> list[Path]:
    paths = [path_stem.with_name(path_stem.name + ".png"), path_stem.with_name(path_stem.name + ".svg")]
    artifacts.atomic_write_bytes(paths[0], png)
    artifacts.atomic_write_bytes(paths[1], svg)
    return paths


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write ``fig`` as ``STEM.png`` (120 dpi) and ``STEM.svg``, each atomically.

    Args:
        fig: a figure from :mod:`lape.plots`.
        path_stem: the path without suffix; its folder is created.

    Returns:
        ``[STEM.png, STEM.svg]``.

    Example:
        >>> save_figure(plots.overlap_heatmap(sets), Path("runs/demo/plots/overlap_heatmap"))
        [PosixPath('runs/demo/plots/overlap_heatmap.png'), PosixPath('runs/demo/plots/overlap_heatmap.svg')]
    """
    png, svg = render_figure(fig)
    return write_figure(png, svg, Path(path_stem))


def save_result_figure(result: Any, out: str | Path | None, stem: str, make: Callable[[Any], Figure]) -> None:
    """Write ``out/STEM.png|svg`` of ``make(result)``, unless ``result`` came from its cache and
    both files are there already (a cached re-run draws nothing); nothing without ``out``."""
    if out is None:
        return
    if getattr(result, "from_cache", False) and all((Path(out) / f"{stem}.{ext}").is_file() for ext in ("png", "svg")):
        return
    save_figure(make(result), Path(out) / stem)


# --------------------------------------------------------------------------------------------
# HTML pieces


def esc(value: Any) -> str:
    """HTML-escape any value's text (model outputs hold arbitrary text)."""
    return html.escape(str(value), quote=True)


def cell_text(value: Any, digits: int = 4) -> str:
    """A table cell's text, the same in the HTML report and in Markdown: floats to ``digits``
    significant digits, integers with thousands separators, ``None``/NaN as a dash, booleans as
    yes/no, mappings and lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.{digits}g}" if abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def fmt_cell(value: Any, digits: int = 4) -> str:
    """A cell's escaped HTML text (:func:`cell_text`)."""
    return esc(cell_text(value, digits))


def fmt_dec(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """Fixed decimals (``+1.25`` when signed); ``None``/NaN as a dash."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:{'+' if signed else ''},.{digits}f}"


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "",
           row_classes: Sequence[str] | None = None, cell_classes: Callable[[int, int], str] | None = None,
           left: int | set[int] = 1) -> str:
    """An HTML table; cells are values (formatted by :func:`fmt_cell`) or ``Raw`` HTML.

    The first ``left`` columns (or the columns in the set ``left``) are left-aligned text; the
    rest (numbers) right-aligned.
    """
    def is_left(j: int) -> bool:
        return j in left if isinstance(left, set) else j < left

    def cls(i: int, j: int) -> str:
        names = ["l"] if is_left(j) else []
        if i >= 0 and cell_classes is not None and (extra := cell_classes(i, j)):
            names.append(extra)
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(-1, j)}>{esc(h)}</th>" for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td{cls(i, j)}>{v if isinstance(v, Raw) else fmt_cell(v)}</td>"
                        for j, v in enumerate(row))
        body.append(f"<tr{rc}>{cells}</tr>")
    cap = f'<p class="cap">{esc(caption)}</p>' if caption else ""
    return (f'<div class="scroll">{cap}<table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


class Raw(str):
    """Already-escaped HTML for a table cell."""


def kv_table(items: Mapping[str, Any], caption: str = "") -> str:
    """A two-column settings table; nested values as compact JSON."""
    rows = []
    for k, v in items.items():
        nested = isinstance(v, Mapping) or (isinstance(v, list) and any(isinstance(x, (Mapping, list)) for x in v))
        if nested:
            v = Raw(f"<code>{esc(json.dumps(v, ensure_ascii=False, default=str))}</code>")
        rows.append((k, v))
    return html_table(["setting", "value"], rows, left=2, caption=caption).replace("<table>", '<table class="kv">', 1)


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def lang_tag(code: Any) -> str:
    return f'<span class="lang">{esc(code if code else "?")}</span>'


@dataclass
class ReportContext:
    """What a section renderer gets besides its folder.

    Attributes:
        run: the run folder.
        plots_dir: where figures are saved (``RUN/plots``).
        written: figure files written so far.
    """

    run: Path
    plots_dir: Path
    written: list[Path] = field(default_factory=list)
    found: dict[str, list[Path]] = field(default_factory=dict)  # artifact kind -> folders, by sidecar
    _stats: Any = field(default=None, repr=False)

    def figure(self, fig: Figure, name: str, caption: str) -> str:
        """Save ``fig`` as ``plots/NAME.png|svg`` and return a ``<figure>`` with it embedded."""
        png, svg = render_figure(fig)
        self.written += write_figure(png, svg, self.plots_dir / name)
        data = base64.b64encode(png).decode("ascii")
        # shown at the figure's size in inches (96 CSS px each), so all figures share one font
        # size; narrower screens scale them down
        width, height = (round(v * 96 / PNG_DPI) for v in struct.unpack(">II", png[16:24]))
        return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
                f'alt="{esc(caption)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def stats(self) -> ActivationStats | None:
        """The run's activation statistics (loaded once), or ``None`` if there are none."""
        folders = self.found.get(ActivationStats.KIND) or []
        if self._stats is None and folders:
            self._stats = ActivationStats.load(folders[0])
        return self._stats


SectionRenderer = Callable[[Path, ReportContext], str]


def section_html(key: str, title: str, body: str) -> str:
    return (f'<section id="{esc(key)}"><h2>{esc(title)} <span class="path">{esc(key)}/</span></h2>'
            f"{body}</section>")


def facts_list(items: Mapping[str, Any]) -> str:
    return "<dl class=\"facts\">" + "".join(f"<dt>{esc(k)}</dt><dd>{v if isinstance(v, Raw) else fmt_cell(v)}</dd>"
                                          for k, v in items.items()) + "</dl>"
