"""Small display helpers: tables that render as Markdown in Jupyter and as plain text in a terminal.

Introduced in notebook 01.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from helpers.checks import checked, instance, listed, optional, text


class Table:
    """Rows of equal keys. Shown as a Markdown table in a notebook, aligned text when printed."""

    @checked(rows=listed(instance(Mapping, "a dict of column: value"), 1), title=optional(text))
    def __init__(self, rows: Sequence[Mapping[str, Any]], title: str | None = None):
        keys = list(rows[0])
        self.columns = [str(key) for key in keys]
        self.rows = [[str(row.get(key, "")) for key in keys] for row in rows]
        self.title = title

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.title}**\n"] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths)))
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in self.rows]
        return "\n".join(lines)

    __repr__ = __str__
