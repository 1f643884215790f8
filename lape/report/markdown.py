"""The Markdown side of the render layer: the README's result tables are written from the same
values, with the same cell text (:func:`lape.report.html.cell_text`), as the HTML report's.

Example:
    >>> print(markdown_table(["set", "neurons"], [["fr", 48], ["all", 1369]]))
    | set | neurons |
    |---|---|
    | fr | 48 |
    | all | 1,369 |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .html import cell_text


def markdown_cell(value: Any, digits: int = 4) -> str:
    """One cell: :func:`cell_text`, with pipes and line breaks escaped for a Markdown table."""
    return cell_text(value, digits).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are values (formatted by :func:`markdown_cell`) or finished text."""
    out = ["| " + " | ".join(markdown_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown_records(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """One of a result's ``tables()`` (a list of row dicts) as a Markdown table, its columns the
    first row's keys (or ``columns``), as the HTML report shows it."""
    if not records:
        return ""
    columns = list(columns or records[0].keys())
    return markdown_table(columns, [[r.get(c) for c in columns] for r in records])
