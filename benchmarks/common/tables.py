"""Markdown tables, and the hand-written analysis kept below a generated report."""

from __future__ import annotations

import statistics
from pathlib import Path

MARKER = "<!-- analysis -->"   # a report's text from this line on is written by hand: kept


def row(cells) -> str:
    """One table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def rule(n: int) -> str:
    """The line under a header of ``n`` columns: ``|---|---|``."""
    return "|" + "---|" * n


def table(header, rows=()) -> list[str]:
    """A Markdown table's lines: header, rule and one line per row of cells."""
    return [row(header), rule(len(header)), *(row(r) for r in rows)]


def analysis(path: Path) -> str:
    """The hand-written part of an existing report, from ``MARKER`` on ("" if none)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    return text[text.index(MARKER):] if MARKER in text else ""


def mean_halfrange(values) -> str:
    """``mean ± half-range`` over seeds to 3 decimals (one value: itself); None and NaN are left
    out, and none left reads ``n/a``."""
    v = [x for x in values if x is not None and x == x]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}"
