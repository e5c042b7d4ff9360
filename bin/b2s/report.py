"""REPORT stage: one self-contained HTML page summarising a run.

Images are embedded as base64 PNG data URIs and tables as HTML, with a small inline style sheet,
so the file can be mailed or opened offline: it references no external resource. Files are
found by the names of docs/architecture.md; every optional file may be missing (e.g. no loss
plot when pretrained weights were given) and the page says so instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GROUP_SUFFIXES = (
    ".metrics.json", ".filter_summary.json", ".cellprop.png", ".cellprop.csv",
    ".correlation.png", ".correlation.csv", ".correlation_matrix.csv", ".mde.png",
    ".filtered.h5ad", ".generated.h5ad",
)
STAGE_SUMMARIES = ("prepare_summary.json", "fractions_summary.json", "preprocess_summary.json",
                   "train_summary.json")

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#222;
     background:#fafafa;line-height:1.45}
header{background:#23395d;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:1.6em}
header p{margin:0;opacity:.85}
nav{position:sticky;top:0;z-index:5;background:#eef1f6;border-bottom:1px solid #cfd6e3;
    padding:6px 32px;font-size:.92em}
nav a{margin-right:14px;color:#23395d;text-decoration:none;white-space:nowrap}
nav a:hover{text-decoration:underline}
nav .sep{color:#99a;margin-right:14px}
main{padding:8px 32px 40px 32px;max-width:1280px}
h2{border-bottom:2px solid #23395d;padding-bottom:4px;margin-top:36px;scroll-margin-top:40px}
h3{margin-top:24px;color:#23395d}
.tbl{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:8px 0 16px 0;font-size:.86em;background:#fff}
caption{text-align:left;font-weight:600;color:#23395d;padding:2px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f6;vertical-align:bottom}
tbody th{background:#f5f7fa;font-weight:600;min-width:9em;max-width:16em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;word-break:break-all}
tr.total th,tr.total td{border-top:2px solid #999;font-weight:600}
img{max-width:100%;border:1px solid #e3e3e3;background:#fff;margin:6px 0}
img.wide{max-width:960px;width:100%}
.note{color:#8a5a00;background:#fff6e0;border-left:4px solid #f0b400;padding:6px 10px}
.muted{color:#777}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.grid>div{flex:1 1 440px;min-width:320px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #dde3ec;border-radius:6px;padding:8px 14px;min-width:150px}
.card .v{font-size:1.35em;font-weight:600;color:#23395d}
.card .k{font-size:.8em;color:#666}
.params{columns:2 420px}
.params table{width:100%;break-inside:avoid;margin-top:0}
.good{color:#1a7f37}.warn{color:#b35900}
details{margin:6px 0}
pre{background:#f1f1f1;padding:8px;overflow-x:auto;font-size:.8em}
"""

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


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _anchor(name: str) -> str:
    return "g-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _fmt(v: Any, digits: int = 3) -> str:
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


def _pct(v: Any) -> str:
    return "NA" if not _is_num(v) or math.isnan(float(v)) else f"{100 * float(v):.1f}%"


def _secs(v: Any) -> str:
    if not _is_num(v):
        return _fmt(v)
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:.0f} s" if s < 3600 else f"{s / 3600:.1f} h"


def _img(path: Path | None, alt: str, cls: str = "") -> str:
    """``<img>`` with the PNG embedded, or a note when the file is absent/unreadable."""
    if path is None:
        return f'<p class="note">{_esc(alt)}: plot not found.</p>'
    try:
        raw = path.read_bytes()
    except OSError as err:
        return f'<p class="note">{_esc(alt)}: cannot read {_esc(path.name)} ({_esc(err)}).</p>'
    if not raw.startswith(b"\x89PNG"):
        return f'<p class="note">{_esc(alt)}: {_esc(path.name)} is empty or not a PNG.</p>'
    data = base64.b64encode(raw).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="data:image/png;base64,{data}" alt="{_esc(alt)}" title="{_esc(alt)}">'


def _td(text: str, num: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    return f"<td class='{classes}'>{text}</td>" if classes else f"<td>{text}</td>"


def _kv_table(d: dict[str, Any], caption: str | None = None,
              formatters: dict[str, Any] | None = None) -> str:
    """Two-column table: human label (raw key as tooltip) and the formatted value."""
    formatters = formatters or {}
    rows = []
    for k, v in d.items():
        label = LABELS.get(k, k)
        shown = formatters[k](v) if k in formatters else _fmt(v)
        tip = f" title='{_esc(k)}'" if label != k else ""
        rows.append(f"<tr><th{tip}>{_esc(label)}</th>{_td(_esc(shown), _is_num(v))}</tr>")
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<div class='tbl'><table>{cap}<tbody>{''.join(rows)}</tbody></table></div>"


def _df_table(df: pd.DataFrame, index: bool = True, digits: int = 3,
              index_label: str | None = None, total_row: str | None = None,
              formatters: dict[str, Any] | None = None) -> str:
    """Escaped HTML table: text left-aligned, numbers right-aligned with fixed decimals, the
    index (row labels such as cell types) as a wrapped header column, no pandas multi-row header.
    ``total_row`` names an index label rendered as a bold summary row."""
    formatters = formatters or {}

    def cell(col: Any, v: Any) -> str:
        if col in formatters:
            return _td(_esc(formatters[col](v)), True)
        if _is_num(v) and not (isinstance(v, float) and math.isnan(v)):
            if isinstance(v, (float, np.floating)) and not float(v).is_integer():
                return _td(f"{float(v):.{digits}f}", True)
            return _td(_esc(_fmt(v)), True)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return _td("<span class='muted'>NA</span>", True)
        return _td(_esc(v))

    cols = list(df.columns)
    num_cols = {c for c in cols if pd.api.types.is_numeric_dtype(df[c])}
    head = ""
    if index:
        head += f"<th>{_esc(index_label if index_label is not None else (df.index.name or ''))}</th>"
    head += "".join(f"<th class='num'>{_esc(c)}</th>" if c in num_cols else f"<th>{_esc(c)}</th>"
                    for c in cols)
    body = []
    for idx, row in zip(df.index, df.itertuples(index=False, name=None)):
        tr = " class='total'" if total_row is not None and idx == total_row else ""
        cells = (f"<th>{_esc(idx)}</th>" if index else "") + "".join(
            cell(c, v) for c, v in zip(cols, row))
        body.append(f"<tr{tr}>{cells}</tr>")
    return (f"<div class='tbl'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_csv(path: Path | None, **kw: Any) -> pd.DataFrame | None:
    if path is None:
        return None
    try:
        return pd.read_csv(path, **kw)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _index_files(inputs_dir: Path) -> dict[str, Path]:
    """basename -> path of every file under ``inputs_dir`` (first in sorted order wins)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(inputs_dir, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            found.setdefault(f, Path(root) / f)
    return found


def discover_groups(files: dict[str, Path]) -> list[str]:
    """Group names from per-group file names, in fractions.csv order when available."""
    groups: set[str] = set()
    for name in files:
        for suf in GROUP_SUFFIXES:
            if name.endswith(suf) and len(name) > len(suf):
                groups.add(name[: -len(suf)])
    order: list[str] = []
    frac = _read_csv(files.get("fractions.csv"), index_col=0)
    if frac is not None:
        order = [str(g) for g in frac.index if str(g) in groups]
    return order + sorted(groups - set(order))


def _parse_versions(text: str) -> pd.DataFrame | None:
    """versions.yml (``process: {tool: version}`` blocks) -> table tool, version(s), processes."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    tools: dict[str, dict[str, list[str]]] = {}
    for proc, block in data.items():
        if not isinstance(block, dict):
            continue
        for tool, ver in block.items():
            tools.setdefault(str(tool), {}).setdefault(str(ver), []).append(str(proc).split(":")[-1])
    rows = [{"tool": t, "version": ", ".join(vs),
             "processes": ", ".join(sorted({p for ps in vs.values() for p in ps}))}
            for t, vs in sorted(tools.items())]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def _section_run(params: dict[str, Any], versions_yaml: str | None) -> str:
    """Run parameters and software versions (reference material: placed after the results)."""
    parts = ["<h2 id='run'>Run parameters and software</h2>"]
    if params:
        items = sorted(params.items())
        half = (len(items) + 1) // 2

        def ptable(chunk: list[tuple[str, Any]]) -> str:
            rows = []
            for k, v in chunk:
                text = _esc(_fmt(v))
                path_like = isinstance(v, str) and ("/" in v or "\\" in v)
                # values are heterogeneous (paths, flags, numbers): all left-aligned
                rows.append(f"<tr><th>{_esc(k)}</th>"
                            + _td(text, False, "path" if path_like else "") + "</tr>")
            return f"<table><tbody>{''.join(rows)}</tbody></table>"

        parts.append("<h3>Parameters</h3><div class='params'>" + ptable(items[:half])
                     + ptable(items[half:]) + "</div>")
    else:
        parts.append('<p class="note">No run parameters were given.</p>')
    parts.append("<h3>Software versions</h3>")
    text = None
    if versions_yaml:
        p = Path(versions_yaml)
        try:
            text = p.read_text() if p.is_file() else None
        except OSError:
            text = None
    if text is None:
        parts.append('<p class="muted">versions.yml not available.</p>')
    else:
        table = _parse_versions(text)
        parts.append(_df_table(table, index=False) if table is not None and len(table)
                     else f"<pre>{_esc(text)}</pre>")
    return "\n".join(parts)


def _card(value: str, label: str) -> str:
    return f"<div class='card'><div class='v'>{value}</div><div class='k'>{label}</div></div>"


def _section_summary(groups: list[str], files: dict[str, Path], params: dict[str, Any]) -> str:
    """At-a-glance facts of the run, then one row per group linking to its section."""
    parts = ["<h2 id='summary'>Summary</h2>"]
    metrics = {g: _read_json(files.get(f"{g}.metrics.json")) or {} for g in groups}
    filt = {g: _read_json(files.get(f"{g}.filter_summary.json")) or {} for g in groups}

    def total(key: str, fkey: str) -> int | None:
        vals = [metrics[g].get(key, filt[g].get(fkey)) for g in groups]
        vals = [v for v in vals if _is_num(v)]
        return int(sum(vals)) if vals else None

    n_gen, n_kept = total("n_generated", "n_cells_in"), total("n_filtered", "n_cells_out")
    rs = [metrics[g]["marker_r_mean"] for g in groups if _is_num(metrics[g].get("marker_r_mean"))]
    train = _read_json(files.get("train_summary.json")) or {}
    frac = _read_json(files.get("fractions_summary.json")) or {}
    prep = _read_json(files.get("preprocess_summary.json")) or {}
    fparams = frac.get("params") if isinstance(frac.get("params"), dict) else {}
    method = frac.get("method") or fparams.get("method")
    cards = [_card(_esc(len(groups)), "groups")]
    if n_gen is not None:
        cards.append(_card(_esc(_fmt(n_gen)), "cells generated"))
    if n_kept is not None:
        kept = f" ({_pct(n_kept / n_gen)})" if n_gen else ""
        cards.append(_card(_esc(_fmt(n_kept) + kept), "cells kept after filtering"))
    if rs:
        cards.append(_card(_esc(f"{np.mean(rs):.3f}"), "marker r vs reference (mean over groups)"))
    ident = [(metrics[g]["n_celltypes_identified"], metrics[g]["n_celltypes_assessed"]) for g in groups
             if _is_num(metrics[g].get("n_celltypes_identified")) and metrics[g].get("n_celltypes_assessed")]
    if ident:
        k, n = min(ident, key=lambda kn: kn[0] / kn[1])
        cls = " class='warn'" if any(metrics[g].get("warnings") for g in groups) else ""
        cards.append(_card(f"<span{cls}>{k}/{n}</span>",
                           "cell types told apart" + (" (lowest group)" if len(groups) > 1 else "")))
    typ = [(metrics[g]["typing_accuracy"], metrics[g].get("typing_accuracy_reference")) for g in groups
           if _is_num(metrics[g].get("typing_accuracy"))]
    if typ:
        acc, ref_acc = min(typ, key=lambda t: t[0])
        cls = " class='warn'" if any(metrics[g].get("warnings") for g in groups) else ""
        ref_txt = f" / {float(ref_acc):.2f}" if _is_num(ref_acc) else ""
        cards.append(_card(f"<span{cls}>{float(acc):.2f}{_esc(ref_txt)}</span>",
                           "kNN typing accuracy, generated / reference cells"
                           + (" (lowest group)" if len(groups) > 1 else "")))
    cards += _structure_cards(groups, metrics)
    if train:
        cards.append(_card(_esc(_fmt(train.get("device"))), "training device"))
        ep = _fmt(train.get("epochs_run"))
        if _is_num(train.get("best_epoch")):
            ep += f" (best {_fmt(train['best_epoch'])})"
        cards.append(_card(_esc(ep), "epochs"))
    elif params.get("vae_weights"):
        cards.append(_card("pretrained", "VAE weights (no training)"))
    if method:
        cards.append(_card(_esc(method), "fraction method"))
    if _is_num(prep.get("n_cells")):
        genes = prep.get("n_genes_shared")
        cards.append(_card(_esc(_fmt(prep["n_cells"])),
                           "reference cells" + (f" &middot; {_esc(_fmt(genes))} shared genes"
                                                if _is_num(genes) else "")))
    if "seed" in params:
        cards.append(_card(_esc(_fmt(params["seed"])), "seed"))
    parts.append("<div class='cards'>" + "".join(cards) + "</div>")
    # warnings first, above the cards: the run may look fine otherwise
    parts[1:1] = [f'<p class="note warn"><b>WARNING {_esc(where)}</b>: {_esc(w)}</p>'
                  for where, w in warning_lines(groups, metrics, files.get(TASK_WARNINGS))]
    parts.append("<h3 id='groups'>Groups</h3>" + _overview(groups, files))
    return "\n".join(parts)


#: WARNING: lines of every task, collected by the workflow (STAGE<TAB>group<TAB>warning).
TASK_WARNINGS = "task_warnings.tsv"


def read_task_warnings(path: Path | None) -> list[tuple[str, str, str]]:
    """``(stage, group, warning)`` rows of the pipeline's ``task_warnings.tsv`` (the WARNING:
    lines every task printed, collected by the workflow); [] when the file is absent."""
    if path is None or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append((parts[0], parts[1], parts[2].strip()))
    return rows


def warning_lines(groups: list[str], metrics: dict[str, dict[str, Any]],
                  task_warnings: Path | None) -> list[tuple[str, str]]:
    """``(where, warning)`` for the top of the report: QC's per-group warnings, then every other
    task warning (stage and group), each once (QC prints its own warnings as task lines too)."""
    out = [(g, str(w)) for g in groups for w in metrics[g].get("warnings") or []]
    shown = {w for _, w in out}
    for stage, group, text in read_task_warnings(task_warnings):
        if not any(w in text for w in shown):
            out.append((f"{stage} {group}".strip(), text))
            shown.add(text)
    return out


def _section_fractions(files: dict[str, Path]) -> str:
    parts = ["<h2 id='fractions'>Cell-type fractions</h2>"]
    summ = _read_json(files.get("fractions_summary.json"))
    if summ:
        sp = summ.get("params") if isinstance(summ.get("params"), dict) else {}
        method = summ.get("method") or sp.get("method")
        if method:
            parts.append(f"<p>Estimated from the bulk profiles with method <b>{_esc(method)}</b>"
                         "; values are fractions of cells (each group sums to 1).</p>")
    frac = _read_csv(files.get("fractions.csv"), index_col=0)
    if frac is not None:
        frac = frac.rename(index=group_names(files))  # display names as given
    parts.append("<div class='grid'><div>")
    parts.append(_df_table(frac.T, index_label="cell type") if frac is not None
                 else '<p class="note">fractions.csv not found.</p>')
    parts.append("</div><div>")
    parts.append(_img(files.get("fractions_barplot.png"), "Estimated fractions per group"))
    parts.append("</div></div>")
    samples = _read_csv(files.get("sample_fractions.csv"), index_col=0)
    if samples is not None and len(samples):
        parts.append("<details><summary>Fractions per sample (sample_fractions.csv)</summary>"
                     + _df_table(samples.T, index_label="cell type") + "</details>")
    targets = _read_csv(files.get("cell_targets.csv"), dtype={"group": str, "celltype": str})
    if targets is not None and {"group", "celltype", "n_cells"} <= set(targets.columns):
        pivot = targets.pivot_table(index="celltype", columns="group", values="n_cells",
                                    aggfunc="sum", sort=False)
        pivot.loc["total"] = pivot.sum()
        pivot.columns.name = None
        pivot = pivot.rename(columns=group_names(files))
        parts.append("<h3>Target cell numbers (cell_targets.csv)</h3>"
                     "<p class='muted'>Cells to generate per cell type and group.</p>"
                     + _df_table(pivot.astype("Int64"), index_label="cell type",
                                 total_row="total"))
    return "\n".join(parts)


def _section_training(files: dict[str, Path], params: dict[str, Any]) -> str:
    parts = ["<h2 id='training'>VAE training</h2>"]
    summ = _read_json(files.get("train_summary.json"))
    plot = files.get("loss_plot.png")
    if summ is None and plot is None:
        why = ("pretrained weights were given (--vae_weights), so no training ran"
               if params.get("vae_weights") else "no training outputs were found")
        parts.append(f'<p class="note">No loss plot: {_esc(why)}.</p>')
        return "\n".join(parts)
    parts.append("<div class='grid'><div>")
    if summ is not None:
        keys = ["device", "epochs_run", "best_epoch", "best_loss", "seconds", "resumed_from"]
        shown = {k: summ[k] for k in keys if k in summ}
        shown.update({k: v for k, v in summ.items()
                      if k not in shown and k != "params" and not isinstance(v, (dict, list))})
        extra = summ.get("extra")
        if isinstance(extra, dict):
            shown.update({k: v for k, v in extra.items()
                          if k not in shown and not isinstance(v, (dict, list))})
        fmts = {"seconds": _secs, "seconds_per_epoch": lambda v: (
            f"{1000 * float(v):.0f} ms" if _is_num(v) and float(v) < 1 else _secs(v)),
            "best_loss": lambda v: f"{float(v):.4f}" if _is_num(v) else _fmt(v),
            "resumed_from": lambda v: "no (fresh start)" if v is None else _fmt(v)}
        parts.append(_kv_table(shown, formatters=fmts))
    else:
        parts.append('<p class="note">train_summary.json not found.</p>')
    parts.append("</div><div>")
    parts.append(_img(plot, "Training loss"))
    parts.append("</div></div>")
    return "\n".join(parts)


def _overview(groups: list[str], files: dict[str, Path]) -> str:
    head = ["group", "target cells", "generated", "kept", "fraction kept", "marker r (mean)",
            "marker r (min)", "types told apart", "L1 target vs kept proportions"]
    rows = []
    for g in groups:
        m = _read_json(files.get(f"{g}.metrics.json")) or {}
        f = _read_json(files.get(f"{g}.filter_summary.json")) or {}
        l1 = m.get("proportion_l1", {}) if isinstance(m.get("proportion_l1"), dict) else {}
        vals = [m.get("n_target"), m.get("n_generated", f.get("n_cells_in")),
                m.get("n_filtered", f.get("n_cells_out"))]
        kept = m.get("fraction_kept", f.get("fraction_kept"))
        r = [m.get("marker_r_mean"), m.get("marker_r_min")]
        cells = [f'<th><a href="#{_anchor(g)}">{_esc(g)}</a></th>']
        cells += [_td(_esc(_fmt(v)), True) for v in vals]
        cells.append(_td(_esc(_pct(kept)), True))
        cells += [_td(_esc(f"{float(v):.3f}" if _is_num(v) else "NA"), True) for v in r]
        k, n = m.get("n_celltypes_identified"), m.get("n_celltypes_assessed")
        cells.append(_td(_esc(f"{k}/{n}" if _is_num(k) and _is_num(n) and n else "NA"), True))
        l1v = l1.get("target_vs_filtered")
        cells.append(_td(_esc(f"{float(l1v):.3f}" if _is_num(l1v) else "NA"), True))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        return '<p class="note">No per-group outputs were found.</p>'
    thead = "".join(f"<th>{h}</th>" if i == 0 else f"<th class='num'>{h}</th>"
                    for i, h in enumerate(head))
    return (f"<div class='tbl'><table><thead><tr>{thead}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div><p class='muted'>marker r: Pearson correlation between "
            "reference and generated mean expression per cell type over marker genes; types told "
            "apart: reference types whose own generated cells correlate better with them than any "
            "other generated type does (few = generated cells look alike, e.g. too few epochs); L1: sum of "
            "absolute differences of cell-type proportions (0 = identical, 2 = disjoint).</p>")


def _cellprop_table(cp: pd.DataFrame) -> str:
    """Counts with the proportion in brackets, one column per stage."""
    stages = [s for s in ("reference", "target", "generated", "filtered") if f"n_{s}" in cp]
    if not stages:
        return _df_table(cp, index_label="cell type")
    out = pd.DataFrame(index=cp.index)
    for s in stages:
        n = cp[f"n_{s}"]
        p = cp[s] if s in cp else n / n.sum() if n.sum() else n * np.nan
        out[s if s != "filtered" else "kept"] = [
            f"{_fmt(a)} ({float(b):.3f})" if _is_num(b) and not math.isnan(float(b)) else _fmt(a)
            for a, b in zip(n, p)]
    body = "".join(
        f"<tr><th>{_esc(idx)}</th>" + "".join(_td(_esc(v), True) for v in row) + "</tr>"
        for idx, row in zip(out.index, out.itertuples(index=False, name=None)))
    totals = "".join(_td(_esc(_fmt(cp[f"n_{s}"].sum())), True) for s in stages)
    head = "<th>cell type</th>" + "".join(f"<th class='num'>{_esc(c)}</th>" for c in out.columns)
    return (f"<div class='tbl'><table><thead><tr>{head}</tr></thead><tbody>{body}"
            f"<tr class='total'><th>total</th>{totals}</tr></tbody></table></div>"
            "<p class='muted'>cells (proportion).</p>")


def _correlation_table(corr: pd.DataFrame) -> str:
    """Per-type marker correlation; constant marker counts move to the caption."""
    corr = corr.copy()
    caption = ""
    for c in ("n_markers", "n_own_markers"):
        if c in corr and corr[c].nunique(dropna=True) == 1:
            caption += (f"{'all' if c == 'n_markers' else 'own'} markers: "
                        f"{_fmt(corr[c].dropna().iloc[0])}; ")
            corr = corr.drop(columns=c)
    if "note" in corr:
        corr["note"] = corr["note"].fillna("")
        if not corr["note"].astype(str).str.len().any():
            corr = corr.drop(columns="note")
    ren = {"pearson_r": "r (all markers)", "pearson_r_own": "r (own markers)",
           "n_reference": "reference cells", "n_generated": "generated cells",
           "n_markers": "markers", "n_own_markers": "own markers"}
    if "celltype" in corr:
        corr = corr.set_index("celltype")
    corr = corr.rename(columns=ren)
    return (_df_table(corr, index_label="cell type")
            + (f"<p class='muted'>{_esc(caption.rstrip('; '))}.</p>" if caption else ""))


def group_names(files: dict[str, Path]) -> dict[str, str]:
    """``{group ID (file-name slug): display name as given}`` from prepare_summary.json."""
    summ = _read_json(files.get("prepare_summary.json")) or {}
    names = (summ.get("groups") or {}).get("names") or {}
    return {str(k): str(v) for k, v in names.items()}


def group_label(g: str, files: dict[str, Path]) -> str:
    """The group's display name, with its file name when that differs (HTML-escaped)."""
    name = group_names(files).get(g, g)
    return _esc(name) if name == g else f"{_esc(name)} <span class='muted'>(files: {_esc(g)})</span>"


def _section_bulk_input(files: dict[str, Path]) -> str:
    """How the bulk was read (prepare_summary.json decisions), its units, the rule that set the
    cell numbers (fractions_summary.json) and the group names as given vs in file names."""
    prep = _read_json(files.get("prepare_summary.json")) or {}
    bulk = prep.get("bulk") or {}
    frac = _read_json(files.get("fractions_summary.json")) or {}
    rule = frac.get("cell_number_rule") or {}
    if not bulk and not rule:
        return ""
    parts = ["<h2 id='bulk-input'>Bulk input</h2>"]
    info = {"table": bulk.get("table_shape"), "units": bulk.get("units"),
            "cell numbers": f"{rule.get('rule')}: {rule.get('description')}" if rule else None}
    libs = sorted(((frac.get("counting_noise") or {}).get("effective_library") or {}).values())
    if libs:  # wls on TPM/FPKM: no library size, the counting noise was fitted per sample
        info["counting noise"] = f"fitted from the residuals: effective library {libs[0]:.3g}-{libs[-1]:.3g} reads"
    parts.append(_kv_table({k: v for k, v in info.items() if v is not None}))
    decisions = [d.get("message", "") for d in bulk.get("decisions") or []]
    if decisions:
        parts.append("<p class='muted'>Decisions made while reading the inputs:</p><ul>"
                     + "".join(f"<li>{_esc(d)}</li>" for d in decisions) + "</ul>")
    names = (prep.get("groups") or {}).get("names") or {}
    if any(str(k) != str(v) for k, v in names.items()):
        df = pd.DataFrame({"group (as given)": list(names.values()), "file name": list(names.keys())})
        parts.append(_df_table(df, index=False))
    return "\n".join(parts)


def _section_group(g: str, files: dict[str, Path]) -> str:
    parts = [f"<h2 id='{_anchor(g)}'>Group {group_label(g, files)}</h2>"]
    m = _read_json(files.get(f"{g}.metrics.json"))
    fs = _read_json(files.get(f"{g}.filter_summary.json"))
    parts.append("<div class='grid'><div>")
    if m is not None:
        keys = ["n_target", "n_generated", "n_filtered", "fraction_kept", "marker_r_mean",
                "marker_r_median", "marker_r_min", "marker_r_mean_unfiltered", "n_markers",
                "n_celltypes_reference", "n_celltypes_generated", "n_celltypes_filtered",
                "celltypes_without_r", "n_celltypes_identified", "n_celltypes_assessed",
                "marker_r_margin_median", "typing_accuracy", "typing_accuracy_reference",
                "typing_ratio", "vae_celltypes_identified", "vae_margin_median",
                "within_type_structure_mean", "within_type_floor_mean", "within_type_variance_ratio",
                "within_type_types_assessed", "within_type_types_under_floor"]
        shown = {k: m[k] for k in keys if k in m}
        for k, v in (m.get("proportion_l1") or {}).items():
            shown[f"L1 proportions {k.replace('_', ' ').replace('filtered', 'kept')}"] = v
        r3 = lambda v: f"{float(v):.3f}" if _is_num(v) else _fmt(v)  # noqa: E731
        fmts = {k: r3 for k in shown if k.startswith(("marker_r", "L1 ", "typing_", "vae_margin", "within_type_s",
                                                      "within_type_f", "within_type_v"))}
        fmts["fraction_kept"] = _pct
        parts.append(_kv_table(shown, caption="Metrics (QC)", formatters=fmts))
        for w in m.get("warnings") or []:
            parts.append(f'<p class="note">{_esc(w)}</p>')
    else:
        parts.append(f'<p class="note">{_esc(g)}.metrics.json not found.</p>')
    parts.append("</div><div>")
    if fs is not None:
        fshow = {k: fs[k] for k in ("n_cells_in", "n_cells_out", "n_cells_removed",
                                    "fraction_kept", "n_hvg", "n_pcs", "n_clusters",
                                    "dropped_clusters") if k in fs}
        if isinstance(fs.get("params"), dict):
            for k in ("leiden_size", "engine", "seed"):
                if k in fs["params"]:
                    fshow[k] = fs["params"][k]
        parts.append(_kv_table(fshow, caption="Filtering (leiden clusters)",
                               formatters={"fraction_kept": _pct}))
        for note in fs.get("notes") or []:
            parts.append(f'<p class="note">{_esc(note)}</p>')
    parts.append("</div></div>")
    parts.append("<h3>Cell-type proportions</h3><div class='grid'><div>")
    parts.append(_img(files.get(f"{g}.cellprop.png"), f"Cell-type proportions {g}"))
    parts.append("</div><div>")
    cp = _read_csv(files.get(f"{g}.cellprop.csv"), index_col=0)
    if cp is not None:
        parts.append(_cellprop_table(cp))
    parts.append("</div></div>")
    parts.append("<h3>Marker correlation with the reference</h3>"
                 "<p class='muted'>Pearson r between per-type mean expression of reference and "
                 "generated (filtered) cells over the union of the top wilcoxon markers of each "
                 "reference type (all markers) or over the type's own markers.</p>"
                 "<div class='grid'><div>")
    parts.append(_img(files.get(f"{g}.correlation.png"), f"Marker correlation {g}"))
    parts.append("</div><div>")
    corr = _read_csv(files.get(f"{g}.correlation.csv"), keep_default_na=True)
    if corr is not None:
        parts.append(_correlation_table(corr))
    parts.append("</div></div>")
    parts.append(_section_structure(m))
    parts.append(_section_bulk_qc(g, files))
    parts.append("<h3>Embedding (MDE)</h3>")
    parts.append(_img(files.get(f"{g}.mde.png"), f"MDE {g}", cls="wide"))
    return "\n".join(parts)


def _structure_cards(groups: list[str], metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Summary tile of the within-type structure (b2s.structure): the lowest group's mean
    structure / floor, marked when any type of any group keeps under half of its floor."""
    vals = [(metrics[g]["within_type_structure_mean"], metrics[g].get("within_type_floor_mean"), g) for g in groups
            if _is_num(metrics[g].get("within_type_structure_mean"))]
    if not vals:
        return []
    s, f, _ = min(vals, key=lambda v: v[0])
    under = sum(len(metrics[g].get("within_type_types_under_floor") or []) for g in groups)
    cls = " class='warn'" if under else ""
    floor = f" / {float(f):.2f}" if _is_num(f) else ""
    return [_card(f"<span{cls}>{float(s):.2f}{_esc(floor)}</span>",
                  "within-type structure, generated / real cells' floor"
                  + (" (lowest group)" if len(groups) > 1 else "")
                  + (f"; {under} type(s) under half" if under else ""))]


def _section_structure(m: dict[str, Any] | None) -> str:
    """Per-type within-type structure table of one group (metrics.json ``within_type``)."""
    per = ((m or {}).get("within_type") or {}).get("per_celltype")
    if not isinstance(per, dict) or not per:
        return ""
    df = pd.DataFrame.from_dict(per, orient="index")
    cols = {"n_reference": "reference cells", "n_generated": "generated cells", "n_genes": "genes",
            "structure": "structure", "floor": "floor (real cells)", "share_of_floor": "structure / floor",
            "variance_ratio": "variance ratio", "note": "note"}
    df = df[[c for c in cols if c in df]].rename(columns=cols)
    for c in ("structure", "floor (real cells)", "structure / floor", "variance ratio"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    n_genes = (m or {}).get("within_type", {}).get("n_genes")
    return ("<h3>Within-type structure</h3><p class='muted'>Per cell type, the gene-gene Pearson correlation "
            f"matrix of its {_esc(_fmt(n_genes))} most variable genes in the generated cells against the same in "
            "the type's reference cells (r between the two matrices: ~1 keeps the reference's gene programs, "
            "~0 is the type's mean with count noise); the floor is what real cells score (the type's reference "
            "cells split, seeded, into as many cells as were generated, at most half, and the rest; mean of "
            "several splits). A type under half of its floor is flagged. Variance ratio: median over those "
            "genes of the generated variance / the reference's.</p>"
            + _df_table(df, index_label="cell type"))


#: Rows of <group>.celltype_shifts.csv shown in the report (the file has them all).
SHIFT_ROWS = 15


def _section_bulk_qc(g: str, files: dict[str, Path]) -> str:
    """Generated pseudo-bulk vs the group's bulk (b2s.bulkqc) and the bulk shifts (b2s.bulkshift)."""
    parts = ["<h3>Pseudo-bulk vs the group's bulk</h3>"
             "<p class='muted'>log2 CPM over the genes shared with the bulk. The composition-only "
             "expectation is the reference's mean cell of each type weighted by the group's fractions: "
             "what the generated cells explain beyond it comes from the bulk itself "
             "(<code>--bulk_shift</code>).</p><div class='grid'><div>"]
    parts.append(_img(files.get(f"{g}.bulk_scatter.png"), f"Pseudo-bulk vs bulk {g}"))
    parts.append("</div><div>")
    scores = _read_csv(files.get(f"{g}.bulk_qc.csv"))
    if scores is not None:
        parts.append(_df_table(scores.set_index("profile"), index_label="pseudo-bulk"))
    else:
        parts.append(f"<p class='note'>{_esc(g)}.bulk_qc.csv not found (QC run without the bulk).</p>")
    res = _read_csv(files.get(f"{g}.bulk_residuals.csv"), index_col=0)
    if res is not None and len(res):
        cols = [c for c in ("bulk_log2cpm", "generated_log2cpm", "composition_expected_log2cpm",
                            "residual_generated") if c in res]
        parts.append("<p class='muted'>Genes furthest from the bulk (generated - bulk, log2 CPM):</p>")
        parts.append(_df_table(res[cols].head(10), index_label="gene", digits=2))
    parts.append("</div></div>")
    shifts = _read_csv(files.get(f"{g}.celltype_shifts.csv"))
    m = _read_json(files.get(f"{g}.metrics.json")) or {}
    mode = (m.get("bulk_qc") or {}).get("bulk_shift", "none")
    if shifts is None:
        parts.append(f"<p class='muted'>Bulk-informed generation: {_esc(mode)} (no per-type shifts).</p>")
    else:
        parts.append(f"<h3>Per-type shifts from the bulk ({_esc(mode)})</h3>"
                     f"<p class='muted'>{len(shifts)} (type, gene) shifts applied to the generated cells; "
                     f"the largest {min(SHIFT_ROWS, len(shifts))} (all in {_esc(g)}.celltype_shifts.csv).</p>")
        if len(shifts):
            per = shifts.assign(up=shifts["log2fc"] > 0).groupby("celltype")["up"].agg(
                n_up="sum", n_shifted="size")
            per["n_down"] = per["n_shifted"] - per["n_up"]
            parts.append("<div class='grid'><div>")
            parts.append(_df_table(per[["n_up", "n_down"]].astype(int), index_label="cell type"))
            parts.append("</div><div>")
            parts.append(_df_table(shifts.head(SHIFT_ROWS), index=False, digits=2))
            parts.append("</div></div>")
    return "\n".join(parts)


def _section_stage_summaries(files: dict[str, Path]) -> str:
    parts = []
    for name in STAGE_SUMMARIES:
        d = _read_json(files.get(name))
        if d is not None:
            parts.append(f"<details><summary>{_esc(name)}</summary><pre>"
                         f"{_esc(json.dumps(d, indent=2, default=str))}</pre></details>")
    if not parts:
        return ""
    return "<h2 id='stages'>Stage summaries</h2>" + "\n".join(parts)


def _section_files(inputs_dir: Path, files: dict[str, Path]) -> str:
    rows = []
    for name, p in sorted(files.items()):
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        rows.append({"file": _esc(name),
                     "size": "NA" if size is None else _human(size)})
    if not rows:
        return ""
    return ("<h2 id='files'>File index</h2><p class='muted'>Files given to the report "
            f"(from {_esc(inputs_dir.name or str(inputs_dir))}); the published results hold "
            "them in per-stage folders.</p>"
            + pd.DataFrame(rows).to_html(index=False, escape=False, border=0))


def _section_fit(files: dict[str, Path]) -> str:
    """Goodness of fit per sample (fractions_summary.json): how well each bulk is rebuilt from
    its fractions and the reference's per-type profiles; unexplained samples are named first."""
    summ = _read_json(files.get("fractions_summary.json")) or {}
    gof = summ.get("goodness_of_fit")
    if not isinstance(gof, dict) or not gof.get("samples"):
        return ""
    fit = pd.DataFrame(gof["samples"]).T
    thr = gof.get("thresholds", {})
    parts = ["<h3 id='fraction-fit'>Goodness of fit per sample</h3>",
             "<p class='muted'>Each bulk sample against the bulk its fractions reconstruct from the "
             "reference's per-type mean profiles, on the marker genes: <i>fit r</i> = Pearson r of "
             "log1p(CPM), <i>residual</i> = share of marker reads misplaced (0 = perfect). A sample is "
             f"flagged when fit r &lt; {_fmt(thr.get('min_fit_r'))} or residual &gt; "
             f"{_fmt(thr.get('max_residual'))}.</p>"]
    bad = [s for s, row in fit.iterrows() if not bool(row.get("explained", True))]
    if bad:
        parts.append(f"<p class='warn'><b>Warning:</b> the reference explains {len(bad)} sample(s) poorly "
                     f"({_esc(', '.join(map(str, bad[:10])))}{', ...' if len(bad) > 10 else ''}): a cell type "
                     "may be missing from the reference, or the tissue differs; treat their fractions with "
                     "caution.</p>")
    table = fit[["fit_r", "residual"]].astype(float)
    table["explained"] = ["yes" if bool(v) else "NO" for v in fit["explained"]]
    parts.append(_df_table(table, index_label="sample", digits=3))
    return "\n".join(parts)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def _section_between_groups(groups: list[str], files: dict[str, Path]) -> str:
    """Composition change between groups (composition_contrast.csv) and, per group, the per-type
    expression changes from the bulk (``--bulk_shift contrast``): DE tables and what was not identifiable."""
    parts = ["<h2 id='between'>Between groups</h2>"]
    frac = _read_csv(files.get("fractions.csv"), index_col=0)  # the cohort's groups, whatever QC ran
    if (len(frac) if frac is not None else len(groups)) < 2:
        parts.append("<p class='muted'>One group: nothing to compare. Per-type shifts against the reference "
                     "(<code>--bulk_shift weighted</code>) stay opt-in: they also absorb the platform "
                     "differences every sample shares with the reference.</p>")
        return "\n".join(parts)
    cc = _read_csv(files.get("composition_contrast.csv"), dtype={"group": str, "celltype": str})
    if cc is not None and len(cc):
        flagged = cc[cc["excludes_0"].astype(str).str.lower() == "true"]
        parts.append("<h3>Composition change</h3><p class='muted'>Change of each cell type's fraction in a group "
                     f"vs {_esc(cc['versus'].iloc[0])}, 95 % interval from a bootstrap over samples "
                     f"(composition_contrast.csv); {len(flagged)} of {len(cc)} intervals exclude 0 "
                     "(filled points).</p><div class='grid'><div>")
        parts.append(_img(files.get("composition_contrast.png"), "Composition change between groups"))
        parts.append("</div><div>")
        if len(flagged):
            parts.append(_df_table(flagged[["group", "celltype", "change", "ci_low", "ci_high"]], index=False))
        parts.append("</div></div>")
    rows = []
    for g in groups:
        ident = _read_csv(files.get(f"{g}.celltype_identifiability.csv"), dtype={"celltype": str})
        if ident is None:
            continue
        for r in ident.itertuples():
            rows.append({"group": g, "cell type": r.celltype, "share": r.share,
                         "genes up": r.n_up, "genes down": r.n_down,
                         "identifiable": "yes" if str(r.identifiable).lower() == "true" else
                         f"no: {r.reason}"})
    if rows:
        parts.append("<h3>Per-type expression changes</h3><p class='muted'>Each group vs the cohort per cell "
                     "type (<code>--bulk_shift contrast</code>): the genes whose bulk contrast passes the "
                     "evidence threshold, split over the types that make them and applied to the group's "
                     "generated cells. The DE tables (log2 FC, SE, z, p, BH-adjusted p) are "
                     "<code>qc/&lt;group&gt;/&lt;group&gt;.celltype_shifts.csv</code>; types too rare in a group "
                     "are not identifiable from its bulk and left unshifted.</p>")
        parts.append(_df_table(pd.DataFrame(rows), index=False, digits=3))
    return "\n".join(parts)


def build_report(inputs_dir: str, out_path: str, params: dict[str, Any],
                 versions_yaml: str | None = None) -> None:
    """Write the self-contained HTML report of a run.

    Parameters
    ----------
    inputs_dir
        Folder holding the stage outputs (searched recursively, by file name).
    out_path
        HTML file to write (atomically).
    params
        Run parameters shown in the header.
    versions_yaml
        Path of the collected versions.yml, or None.
    """
    import b2s

    root = Path(inputs_dir)
    files = _index_files(root) if root.is_dir() else {}
    groups = discover_groups(files)
    nav = ["<a href='#summary'>Summary</a>", "<a href='#fractions'>Fractions</a>",
           "<a href='#between'>Between groups</a>", "<a href='#training'>Training</a>"]
    if groups:
        nav.append("<span class='sep'>|</span>")
        names = group_names(files)
        nav += [f"<a href='#{_anchor(g)}'>{_esc(names.get(g, g))}</a>" for g in groups]
        nav.append("<span class='sep'>|</span>")
    nav += ["<a href='#run'>Parameters &amp; versions</a>", "<a href='#files'>Files</a>"]
    # results first (summary, fractions, training, groups); run metadata after them
    body = [
        _section_summary(groups, files, params),
        _section_fractions(files),
        _section_bulk_input(files),
        _section_fit(files),
        _section_between_groups(groups, files),
        _section_training(files, params),
        *[_section_group(g, files) for g in groups],
        _section_run(params, versions_yaml),
        _section_stage_summaries(files),
        _section_files(root, files),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>nf-bulk2single report</title>"
        f"<style>{CSS}</style></head><body>"
        "<header id='top'><h1>nf-bulk2single report</h1>"
        f"<p>bulk RNA-seq &rarr; synthetic single cells (beta-VAE) &middot; {len(groups)} "
        f"group(s) &middot; b2s {_esc(b2s.__version__)}</p></header>"
        "<nav>" + "".join(nav) + "</nav>"
        "<main>" + "\n".join(s for s in body if s) + "</main></body></html>\n"
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
