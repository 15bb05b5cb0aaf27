"""Markdown for the pages people read: the one table writer and the one mean ± std of every report, sweep and benchmark."""
from __future__ import annotations

import statistics


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: list[float], spec: str = ".4g") -> str:
    """'mean ± std' over seeds; one value is shown as it is, none as a dash."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:{spec}} (1 seed)"
    return f"{statistics.mean(values):{spec}} ± {statistics.stdev(values):{spec}}"
