"""The report page: one self-contained HTML file and the JSON record beside it.

The page holds the run summary, every figure as an embedded PNG with its caption,
the best particles and the config; ``report.json`` records what each figure shows.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["Picture", "json_safe", "render_html"]


@dataclass(frozen=True)
class Picture:
    """One figure of the report: its file name, heading, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    drawn: dict[str, Any] = field(default_factory=dict)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ccc;padding-bottom:0.2em}
table{border-collapse:collapse;font-size:0.92em}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#555;font-size:0.92em;margin:0.3em 0 1.5em}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.85em}
.note{color:#a05a00}
"""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _particle_table(particles: pd.DataFrame, limit: int = 50) -> str:
    columns = [
        c
        for c in ("x", "y", "zscore", "phi", "theta", "psi", "defocus")
        if c in particles.columns
    ]
    best = particles.sort_values("zscore", ascending=False).head(limit)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{row[c]:.2f}</td>' for c in columns)
        + "</tr>"
        for _, row in best[columns].iterrows()
    )
    more = (
        f"<p>The {limit} highest of {len(particles)} are shown.</p>"
        if len(particles) > limit
        else ""
    )
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _figure_html(picture: Picture) -> str:
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f"<h2>{html.escape(picture.title)}</h2><figure>"
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(picture.title)}">'
        f"<figcaption>{html.escape(picture.caption)} "
        f"(<code>{html.escape(picture.name)}</code>)</figcaption></figure>"
    )


def render_html(
    title: str,
    summary: Sequence[tuple[str, str]],
    pictures: Sequence[Picture],
    particles: pd.DataFrame,
    config_yaml: str,
    notes: Sequence[str] = (),
) -> str:
    """Build a self-contained HTML page: summary, embedded PNGs, particles, config."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        "<h2>Run</h2>",
        _table(summary),
        *(_figure_html(p) for p in pictures),
        "<h2>Particles</h2>",
        _particle_table(particles) if len(particles) else "<p>No particles picked.</p>",
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def json_safe(value: Any) -> Any:
    """Copy ``value`` with NaN and infinite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
