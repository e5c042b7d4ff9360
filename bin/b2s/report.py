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
main{padding:8px 32px 40px 32px;max-width:1200px}
h2{border-bottom:2px solid #23395d;padding-bottom:4px;margin-top:36px}
h3{margin-top:24px;color:#23395d}
nav ul{columns:3;list-style:none;padding-left:0}
table{border-collapse:collapse;margin:8px 0 16px 0;font-size:.86em;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #e3e3e3;background:#fff;margin:6px 0}
.note{color:#8a5a00;background:#fff6e0;border-left:4px solid #f0b400;padding:6px 10px}
.muted{color:#777}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.grid>div{flex:1 1 420px;min-width:320px}
details{margin:6px 0}
pre{background:#f1f1f1;padding:8px;overflow-x:auto;font-size:.8em}
"""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _anchor(name: str) -> str:
    return "g-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _fmt(v: Any) -> str:
    if v is None:
        return "NA"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NA"
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def _img(path: Path | None, alt: str) -> str:
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
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _kv_table(d: dict[str, Any], caption: str | None = None) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in d.items())
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}{rows}</table>"


def _df_table(df: pd.DataFrame, index: bool = True, digits: int = 4) -> str:
    def fmt(v: Any) -> str:
        return _fmt(round(v, digits) if isinstance(v, float) and not math.isnan(v) else v)

    return df.to_html(index=index, escape=True, na_rep="NA", border=0,
                      formatters={c: fmt for c in df.columns})


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
def _section_header(params: dict[str, Any], versions_yaml: str | None) -> str:
    parts = ["<h2 id='run'>Run</h2>"]
    if params:
        parts.append("<h3>Parameters</h3>" + _kv_table(dict(sorted(params.items()))))
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


def _section_fractions(files: dict[str, Path]) -> str:
    parts = ["<h2 id='fractions'>Cell-type fractions</h2>"]
    summ = _read_json(files.get("fractions_summary.json"))
    if summ and isinstance(summ.get("params"), dict) and "method" in summ["params"]:
        parts.append(f"<p>Estimated with method <b>{_esc(summ['params']['method'])}</b>.</p>")
    frac = _read_csv(files.get("fractions.csv"), index_col=0)
    parts.append("<div class='grid'><div>")
    parts.append(_df_table(frac.T) if frac is not None
                 else '<p class="note">fractions.csv not found.</p>')
    parts.append("</div><div>")
    parts.append(_img(files.get("fractions_barplot.png"), "Estimated fractions per group"))
    parts.append("</div></div>")
    samples = _read_csv(files.get("sample_fractions.csv"), index_col=0)
    if samples is not None and len(samples):
        parts.append("<details><summary>Fractions per sample (sample_fractions.csv)</summary>"
                     + _df_table(samples) + "</details>")
    targets = _read_csv(files.get("cell_targets.csv"), dtype={"group": str, "celltype": str})
    if targets is not None and {"group", "celltype", "n_cells"} <= set(targets.columns):
        pivot = targets.pivot_table(index="celltype", columns="group", values="n_cells",
                                    aggfunc="sum", sort=False)
        pivot.loc["total"] = pivot.sum()
        parts.append("<h3>Target cell numbers (cell_targets.csv)</h3>"
                     + _df_table(pivot.astype("Int64")))
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
        parts.append(_kv_table(shown))
    else:
        parts.append('<p class="note">train_summary.json not found.</p>')
    parts.append("</div><div>")
    parts.append(_img(plot, "Training loss"))
    parts.append("</div></div>")
    return "\n".join(parts)


def _overview(groups: list[str], files: dict[str, Path]) -> str:
    rows = []
    for g in groups:
        m = _read_json(files.get(f"{g}.metrics.json")) or {}
        f = _read_json(files.get(f"{g}.filter_summary.json")) or {}
        l1 = m.get("proportion_l1", {}) if isinstance(m.get("proportion_l1"), dict) else {}
        rows.append({
            "group": f'<a href="#{_anchor(g)}">{_esc(g)}</a>',
            "target cells": _esc(_fmt(m.get("n_target"))),
            "generated": _esc(_fmt(m.get("n_generated", f.get("n_cells_in")))),
            "filtered": _esc(_fmt(m.get("n_filtered", f.get("n_cells_out")))),
            "fraction kept": _esc(_fmt(m.get("fraction_kept", f.get("fraction_kept")))),
            "mean marker r": _esc(_fmt(m.get("marker_r_mean"))),
            "min marker r": _esc(_fmt(m.get("marker_r_min"))),
            "L1 target vs filtered": _esc(_fmt(l1.get("target_vs_filtered"))),
        })
    if not rows:
        return '<p class="note">No per-group outputs were found.</p>'
    df = pd.DataFrame(rows)
    return df.to_html(index=False, escape=False, border=0)  # cells escaped above


def _section_group(g: str, files: dict[str, Path]) -> str:
    parts = [f"<h2 id='{_anchor(g)}'>Group {_esc(g)}</h2>"]
    m = _read_json(files.get(f"{g}.metrics.json"))
    fs = _read_json(files.get(f"{g}.filter_summary.json"))
    if m is not None:
        keys = ["n_target", "n_generated", "n_filtered", "fraction_kept", "marker_r_mean",
                "marker_r_median", "marker_r_min", "marker_r_mean_unfiltered", "n_markers",
                "n_celltypes_reference", "n_celltypes_generated", "n_celltypes_filtered",
                "celltypes_without_r"]
        shown = {k: m[k] for k in keys if k in m}
        for k, v in (m.get("proportion_l1") or {}).items():
            shown[f"L1 proportions {k.replace('_', ' ')}"] = v
        parts.append("<h3>Metrics</h3>" + _kv_table(shown))
    else:
        parts.append(f'<p class="note">{_esc(g)}.metrics.json not found.</p>')
    if fs is not None:
        fshow = {k: fs[k] for k in ("n_cells_in", "n_cells_out", "n_cells_removed",
                                    "fraction_kept", "n_hvg", "n_pcs", "n_clusters",
                                    "dropped_clusters") if k in fs}
        if isinstance(fs.get("params"), dict):
            for k in ("leiden_size", "engine", "seed"):
                if k in fs["params"]:
                    fshow[k] = fs["params"][k]
        parts.append("<h3>Filtering</h3>" + _kv_table(fshow))
        for note in fs.get("notes") or []:
            parts.append(f'<p class="note">{_esc(note)}</p>')
    parts.append("<h3>Cell-type proportions</h3><div class='grid'><div>")
    parts.append(_img(files.get(f"{g}.cellprop.png"), f"Cell-type proportions {g}"))
    parts.append("</div><div>")
    cp = _read_csv(files.get(f"{g}.cellprop.csv"), index_col=0)
    if cp is not None:
        parts.append(_df_table(cp))
    parts.append("</div></div>")
    parts.append("<h3>Marker correlation with the reference</h3>"
                 "<p class='muted'>Pearson r between per-type mean expression of reference and "
                 "generated (filtered) cells over the union of the top wilcoxon markers of each "
                 "reference type.</p><div class='grid'><div>")
    parts.append(_img(files.get(f"{g}.correlation.png"), f"Marker correlation {g}"))
    parts.append("</div><div>")
    corr = _read_csv(files.get(f"{g}.correlation.csv"), keep_default_na=True)
    if corr is not None:
        if "note" in corr:
            corr["note"] = corr["note"].fillna("")
        parts.append(_df_table(corr, index=False))
    parts.append("</div></div>")
    parts.append("<h3>Embedding (MDE)</h3>")
    parts.append(_img(files.get(f"{g}.mde.png"), f"MDE {g}"))
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
    nav = ["<a href='#run'>Run</a>", "<a href='#fractions'>Fractions</a>",
           "<a href='#training'>Training</a>", "<a href='#groups'>Groups</a>"]
    nav += [f"<a href='#{_anchor(g)}'>{_esc(g)}</a>" for g in groups]
    nav += ["<a href='#files'>Files</a>"]
    body = [
        "<nav><ul>" + "".join(f"<li>{a}</li>" for a in nav) + "</ul></nav>",
        _section_header(params, versions_yaml),
        _section_fractions(files),
        _section_training(files, params),
        "<h2 id='groups'>Groups overview</h2>" + _overview(groups, files),
        *[_section_group(g, files) for g in groups],
        _section_stage_summaries(files),
        _section_files(root, files),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>nf-bulk2single report</title>"
        f"<style>{CSS}</style></head><body>"
        "<header><h1>nf-bulk2single report</h1>"
        f"<p>bulk RNA-seq &rarr; synthetic single cells (beta-VAE) &middot; {len(groups)} "
        f"group(s) &middot; b2s {_esc(b2s.__version__)}</p></header>"
        "<main>" + "\n".join(s for s in body if s) + "</main></body></html>\n"
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
