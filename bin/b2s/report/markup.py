"""HTML building blocks of the report (b2s.report.build): value formatting and the Jinja2 templates.

The page skeleton (templates/report.html.j2), the repeated structures (templates/macros.html.j2:
cells, tables, images, cards) and the style sheet (templates/report.css, inlined at render time
so the page stays one self-contained file) live next to this module and travel with bin/.
Autoescape is on and escapes exactly as :func:`html.escape` (``quote=True``); values already
rendered as HTML are passed as :class:`markupsafe.Markup`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

TEMPLATES = Path(__file__).with_name("templates")


def _escape(value: Any) -> Markup:
    """Autoescape of the templates: Markup passes, anything else as ``html.escape(str(v))``."""
    return value if hasattr(value, "__html__") else Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=1)
def environment() -> Any:
    """The report's Jinja2 environment (templates/, autoescape on, html.escape semantics)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              finalize=_escape, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


class _Macros:
    """The macros of templates/macros.html.j2, callable from Python. Each returns a plain str:
    Markup would escape every plain string later concatenated to it."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        macro = getattr(self._module, name)
        return lambda *args, **kwargs: str(macro(*args, **kwargs))


@lru_cache(maxsize=1)
def macros() -> _Macros:
    """The macros of templates/macros.html.j2 (see _Macros)."""
    return _Macros(environment().get_template("macros.html.j2").module)


def css() -> Markup:
    """The style sheet (templates/report.css), inlined into the page."""
    return Markup((TEMPLATES / "report.css").read_text(encoding="utf-8"))


def render_page(**context: Any) -> str:
    """The whole page (templates/report.html.j2) with the style sheet inlined."""
    return environment().get_template("report.html.j2").render(css=css(), **context)


def as_html(text: str) -> Markup:
    """Mark ``text`` as HTML already built (and escaped) by the caller."""
    return Markup(text)


# Human labels for summary keys; the raw key is kept as a tooltip (title) so it can be grepped.
LABELS = {
    "n_target": "target cells", "n_generated": "generated cells", "n_filtered": "cells kept",
    "fraction_kept": "fraction kept", "marker_r_mean": "marker r (mean)",
    "marker_r_median": "marker r (median)", "marker_r_min": "marker r (min)",
    "marker_r_mean_unfiltered": "marker r (mean, before filter)", "n_markers": "marker genes",
    "n_celltypes_reference": "cell types in reference",
    "n_celltypes_generated": "cell types generated", "n_celltypes_filtered": "cell types kept",
    "celltypes_without_r": "cell types without r", "n_celltypes_identified": "cell types told apart",
    "n_celltypes_assessed": "cell types assessed", "celltype_identity_rate": "share of types told apart",
    "marker_r_margin_median": "own r minus best other r (median)", "n_cells_in": "cells in",
    "typing_accuracy": "kNN typing accuracy of generated cells (classifier fit on the reference)",
    "typing_accuracy_reference": "kNN typing accuracy of reference cells (leave-one-out)",
    "typing_ratio": "typing accuracy generated / reference",
    "vae_celltypes_identified": "types the VAE itself tells apart (before the per-type calibration)",
    "vae_margin_median": "VAE's own margin (median)",
    "within_type_structure_mean": "within-type structure, generated vs reference (mean over types)",
    "within_type_floor_mean": "within-type structure of real cells (floor from reference splits, mean)",
    "within_type_variance_ratio": "within-type variance ratio, generated / reference (median over types)",
    "within_type_types_assessed": "cell types assessed for within-type structure",
    "within_type_types_under_floor": "cell types under half their floor",
    "n_cells_out": "cells out", "n_cells_removed": "cells removed", "n_hvg": "highly variable genes",
    "n_pcs": "principal components", "n_clusters": "leiden clusters",
    "dropped_clusters": "dropped clusters", "leiden_size": "min. cluster size (leiden_size)",
    "device": "device", "epochs_run": "epochs run", "best_epoch": "best epoch",
    "best_loss": "best loss", "seconds": "training time", "resumed_from": "resumed from",
    "n_cells": "reference cells", "n_genes": "genes", "seconds_per_epoch": "time per epoch",
    "precision": "precision", "threads": "CPU threads", "input_storage": "input storage",
}



def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)



def anchor(name: str) -> str:
    return "g-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)



def is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)



def fmt(v: Any, digits: int = 3) -> str:
    """Plain-text rendering: integers with thousands separators, floats with ``digits``
    significant decimals (never scientific notation for ordinary values), lists joined."""
    if v is None:
        return "NA"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (np.integer, int)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "NA"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) < 10 ** -digits:
            return f"{v:.2g}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") if abs(v) >= 1 else f"{v:.{digits}f}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) if v else "none"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)



def pct(v: Any) -> str:
    return "NA" if not is_num(v) or math.isnan(float(v)) else f"{100 * float(v):.1f}%"



def secs(v: Any) -> str:
    if not is_num(v):
        return fmt(v)
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:.0f} s" if s < 3600 else f"{s / 3600:.1f} h"



def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"




def img(path: Path | None, alt: str, cls: str = "") -> str:
    """``<img>`` with the PNG embedded, or a note when the file is absent/unreadable."""
    m = macros()
    if path is None:
        return m.img(alt, "missing")
    try:
        raw = path.read_bytes()
    except OSError as err:
        return m.img(alt, "unreadable", name=path.name, error=err)
    if not raw.startswith(b"\x89PNG"):
        return m.img(alt, "not_png", name=path.name)
    return m.img(alt, "ok", data=base64.b64encode(raw).decode("ascii"), cls=cls)


def td(text: str, num: bool = False, cls: str = "") -> str:
    """One cell; ``text`` is HTML (escaped by the caller)."""
    return macros().td(as_html(text), num, cls)


def kv_table(d: dict[str, Any], caption: str | None = None,
              formatters: dict[str, Any] | None = None) -> str:
    """Two-column table: human label (raw key as tooltip) and the formatted value."""
    formatters = formatters or {}
    rows = [(k, LABELS.get(k, k), formatters[k](v) if k in formatters else fmt(v), is_num(v))
            for k, v in d.items()]
    return macros().kv_table(rows, caption)


def df_table(df: pd.DataFrame, index: bool = True, digits: int = 3,
              index_label: str | None = None, total_row: str | None = None,
              formatters: dict[str, Any] | None = None) -> str:
    """Escaped HTML table: text left-aligned, numbers right-aligned with fixed decimals, the
    index (row labels such as cell types) as a wrapped header column, no pandas multi-row header.
    ``total_row`` names an index label rendered as a bold summary row."""
    formatters = formatters or {}

    def cell(col: Any, v: Any) -> tuple[Any, bool]:
        if col in formatters:
            return formatters[col](v), True
        if is_num(v) and not (isinstance(v, float) and math.isnan(v)):
            if isinstance(v, (float, np.floating)) and not float(v).is_integer():
                return f"{float(v):.{digits}f}", True
            return fmt(v), True
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return as_html("<span class='muted'>NA</span>"), True
        return v, False

    cols = list(df.columns)
    num_cols = {c for c in cols if pd.api.types.is_numeric_dtype(df[c])}
    head = [(index_label if index_label is not None else (df.index.name or ""), False)] if index else []
    head += [(c, c in num_cols) for c in cols]
    rows = [(total_row is not None and idx == total_row, idx, [cell(c, v) for c, v in zip(cols, row)])
            for idx, row in zip(df.index, df.itertuples(index=False, name=None))]
    return macros().df_table(head, rows, index)


def card(value: str, label: str) -> str:
    """A summary tile; ``value`` and ``label`` are HTML (escaped by the caller)."""
    return macros().card(as_html(value), as_html(label))


def grid(left: list[str], right: list[str]) -> str:
    """Two panes side by side; each pane's parts are HTML (escaped by the caller)."""
    return macros().grid([as_html(p) for p in left], [as_html(p) for p in right])


def details(summary: str, content: str) -> str:
    """A collapsed block: ``summary`` is plain text (escaped here), ``content`` HTML."""
    return macros().details(summary, as_html(content))
