"""Markdown tables: the one writer every report, sweep and benchmark page uses."""
from __future__ import annotations


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
