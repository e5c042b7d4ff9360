"""Per-group sections of the report (b2s.report.build): the overview table, metrics, filtering,
proportions, marker correlation, within-type structure and pseudo-bulk vs bulk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from b2s._constants import (
    BULK_QC_SUFFIX,
    BULK_RESIDUALS_SUFFIX,
    BULK_SCATTER_SUFFIX,
    CELLPROP_PLOT_SUFFIX,
    CELLPROP_SUFFIX,
    CELLTYPE,
    CELLTYPE_SHIFTS_SUFFIX,
    CORRELATION_PLOT_SUFFIX,
    CORRELATION_SUFFIX,
    FILTER_SUMMARY_SUFFIX,
    GENE,
    MDE_PLOT_SUFFIX,
    METRICS_SUFFIX,
)
from b2s.report.inputs import group_label, read_csv, read_json
from b2s.report.markup import anchor, as_html, card, df_table, esc, fmt, grid, img, is_num, kv_table, macros, pct


def overview(groups: list[str], files: dict[str, Path]) -> str:
    head = ["group", "target cells", "generated", "kept", "fraction kept", "marker r (mean)",
            "marker r (min)", "types told apart", "L1 target vs kept proportions"]
    rows = []
    for g in groups:
        m = read_json(files.get(f"{g}{METRICS_SUFFIX}")) or {}
        f = read_json(files.get(f"{g}{FILTER_SUMMARY_SUFFIX}")) or {}
        l1 = m.get("proportion_l1", {}) if isinstance(m.get("proportion_l1"), dict) else {}
        vals = [m.get("n_target"), m.get("n_generated", f.get("n_cells_in")),
                m.get("n_filtered", f.get("n_cells_out"))]
        kept = m.get("fraction_kept", f.get("fraction_kept"))
        r = [m.get("marker_r_mean"), m.get("marker_r_min")]
        k, n = m.get("n_celltypes_identified"), m.get("n_celltypes_assessed")
        l1v = l1.get("target_vs_filtered")
        cells = [fmt(v) for v in vals] + [pct(kept)]
        cells += [f"{float(v):.3f}" if is_num(v) else "NA" for v in r]
        cells.append(f"{k}/{n}" if is_num(k) and is_num(n) and n else "NA")
        cells.append(f"{float(l1v):.3f}" if is_num(l1v) else "NA")
        link = as_html(f'<a href="#{anchor(g)}">{esc(g)}</a>')
        rows.append((False, link, [(c, True) for c in cells]))
    if not rows:
        return '<p class="note">No per-group outputs were found.</p>'
    return (macros().df_table([(h, i > 0) for i, h in enumerate(head)], rows)
            + "<p class='muted'>marker r: Pearson correlation between "
            "reference and generated mean expression per cell type over marker genes; types told "
            "apart: reference types whose own generated cells correlate better with them than any "
            "other generated type does (few = generated cells look alike, e.g. too few epochs); L1: sum of "
            "absolute differences of cell-type proportions (0 = identical, 2 = disjoint).</p>")


def _cellprop_table(cp: pd.DataFrame) -> str:
    """Counts with the proportion in brackets, one column per stage."""
    stages = [s for s in ("reference", "target", "generated", "filtered") if f"n_{s}" in cp]
    if not stages:
        return df_table(cp, index_label="cell type")
    out = pd.DataFrame(index=cp.index)
    for s in stages:
        n = cp[f"n_{s}"]
        p = cp[s] if s in cp else n / n.sum() if n.sum() else n * np.nan
        out[s if s != "filtered" else "kept"] = [
            f"{fmt(a)} ({float(b):.3f})" if is_num(b) and not math.isnan(float(b)) else fmt(a)
            for a, b in zip(n, p)]
    rows = [(False, idx, [(v, True) for v in row])
            for idx, row in zip(out.index, out.itertuples(index=False, name=None))]
    rows.append((True, "total", [(fmt(cp[f"n_{s}"].sum()), True) for s in stages]))
    head = [("cell type", False)] + [(c, True) for c in out.columns]
    return macros().df_table(head, rows) + "<p class='muted'>cells (proportion).</p>"


def _correlation_table(corr: pd.DataFrame) -> str:
    """Per-type marker correlation; constant marker counts move to the caption."""
    corr = corr.copy()
    caption = ""
    for c in ("n_markers", "n_own_markers"):
        if c in corr and corr[c].nunique(dropna=True) == 1:
            caption += (f"{'all' if c == 'n_markers' else 'own'} markers: "
                        f"{fmt(corr[c].dropna().iloc[0])}; ")
            corr = corr.drop(columns=c)
    if "note" in corr:
        corr["note"] = corr["note"].fillna("")
        if not corr["note"].astype(str).str.len().any():
            corr = corr.drop(columns="note")
    ren = {"pearson_r": "r (all markers)", "pearson_r_own": "r (own markers)",
           "n_reference": "reference cells", "n_generated": "generated cells",
           "n_markers": "markers", "n_own_markers": "own markers"}
    if CELLTYPE in corr:
        corr = corr.set_index(CELLTYPE)
    corr = corr.rename(columns=ren)
    return (df_table(corr, index_label="cell type")
            + (f"<p class='muted'>{esc(caption.rstrip('; '))}.</p>" if caption else ""))


def section_group(g: str, files: dict[str, Path]) -> str:
    parts = [f"<h2 id='{anchor(g)}'>Group {group_label(g, files)}</h2>"]
    m = read_json(files.get(f"{g}{METRICS_SUFFIX}"))
    fs = read_json(files.get(f"{g}{FILTER_SUMMARY_SUFFIX}"))
    left: list[str] = []
    right: list[str] = []
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
        r3 = lambda v: f"{float(v):.3f}" if is_num(v) else fmt(v)  # noqa: E731
        fmts = {k: r3 for k in shown if k.startswith(("marker_r", "L1 ", "typing_", "vae_margin", "within_type_s",
                                                      "within_type_f", "within_type_v"))}
        fmts["fraction_kept"] = pct
        left.append(kv_table(shown, caption="Metrics (QC)", formatters=fmts))
        left += [f'<p class="note">{esc(w)}</p>' for w in m.get("warnings") or []]
    else:
        left.append(f'<p class="note">{esc(g)}.metrics.json not found.</p>')
    if fs is not None:
        fshow = {k: fs[k] for k in ("n_cells_in", "n_cells_out", "n_cells_removed",
                                    "fraction_kept", "n_hvg", "n_pcs", "n_clusters",
                                    "dropped_clusters") if k in fs}
        if isinstance(fs.get("params"), dict):
            for k in ("leiden_size", "engine", "seed"):
                if k in fs["params"]:
                    fshow[k] = fs["params"][k]
        right.append(kv_table(fshow, caption="Filtering (leiden clusters)",
                               formatters={"fraction_kept": pct}))
        right += [f'<p class="note">{esc(note)}</p>' for note in fs.get("notes") or []]
    parts.append(grid(left, right))
    cp = read_csv(files.get(f"{g}{CELLPROP_SUFFIX}"), index_col=0)
    parts.append("<h3>Cell-type proportions</h3>"
                 + grid([img(files.get(f"{g}{CELLPROP_PLOT_SUFFIX}"), f"Cell-type proportions {g}")],
                         [_cellprop_table(cp)] if cp is not None else []))
    corr = read_csv(files.get(f"{g}{CORRELATION_SUFFIX}"), keep_default_na=True)
    parts.append("<h3>Marker correlation with the reference</h3>"
                 "<p class='muted'>Pearson r between per-type mean expression of reference and "
                 "generated (filtered) cells over the union of the top wilcoxon markers of each "
                 "reference type (all markers) or over the type's own markers.</p>"
                 + grid([img(files.get(f"{g}{CORRELATION_PLOT_SUFFIX}"), f"Marker correlation {g}")],
                         [_correlation_table(corr)] if corr is not None else []))
    parts.append(_section_structure(m))
    parts.append(_section_bulk_qc(g, files))
    parts.append("<h3>Embedding (MDE)</h3>")
    parts.append(img(files.get(f"{g}{MDE_PLOT_SUFFIX}"), f"MDE {g}", cls="wide"))
    return "\n".join(parts)


def structure_cards(groups: list[str], metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Summary tile of the within-type structure (b2s.qc.structure): the lowest group's mean
    structure / floor, marked when any type of any group keeps under half of its floor."""
    vals = [(metrics[g]["within_type_structure_mean"], metrics[g].get("within_type_floor_mean"), g) for g in groups
            if is_num(metrics[g].get("within_type_structure_mean"))]
    if not vals:
        return []
    s, f, _ = min(vals, key=lambda v: v[0])
    under = sum(len(metrics[g].get("within_type_types_under_floor") or []) for g in groups)
    cls = " class='warn'" if under else ""
    floor = f" / {float(f):.2f}" if is_num(f) else ""
    return [card(f"<span{cls}>{float(s):.2f}{esc(floor)}</span>",
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
            f"matrix of its {esc(fmt(n_genes))} most variable genes in the generated cells against the same in "
            "the type's reference cells (r between the two matrices: ~1 keeps the reference's gene programs, "
            "~0 is the type's mean with count noise); the floor is what real cells score (the type's reference "
            "cells split, seeded, into as many cells as were generated, at most half, and the rest; mean of "
            "several splits). A type under half of its floor is flagged. Variance ratio: median over those "
            "genes of the generated variance / the reference's.</p>"
            + df_table(df, index_label="cell type"))


#: Rows of <group>.celltype_shifts.csv shown in the report (the file has them all).
SHIFT_ROWS = 15


def _section_bulk_qc(g: str, files: dict[str, Path]) -> str:
    """Generated pseudo-bulk vs the group's bulk (b2s.qc.bulk) and the bulk shifts (b2s.generate.bulkshift)."""
    parts = ["<h3>Pseudo-bulk vs the group's bulk</h3>"
             "<p class='muted'>log2 CPM over the genes shared with the bulk. The composition-only "
             "expectation is the reference's mean cell of each type weighted by the group's fractions: "
             "what the generated cells explain beyond it comes from the bulk itself "
             "(<code>--bulk_shift</code>).</p>"]
    right: list[str] = []
    scores = read_csv(files.get(f"{g}{BULK_QC_SUFFIX}"))
    if scores is not None:
        right.append(df_table(scores.set_index("profile"), index_label="pseudo-bulk"))
    else:
        right.append(f"<p class='note'>{esc(g)}.bulk_qc.csv not found (QC run without the bulk).</p>")
    res = read_csv(files.get(f"{g}{BULK_RESIDUALS_SUFFIX}"), index_col=0)
    if res is not None and len(res):
        cols = [c for c in ("bulk_log2cpm", "generated_log2cpm", "composition_expected_log2cpm",
                            "residual_generated") if c in res]
        right.append("<p class='muted'>Genes furthest from the bulk (generated - bulk, log2 CPM):</p>")
        right.append(df_table(res[cols].head(10), index_label=GENE, digits=2))
    parts[0] += grid([img(files.get(f"{g}{BULK_SCATTER_SUFFIX}"), f"Pseudo-bulk vs bulk {g}")], right)
    shifts = read_csv(files.get(f"{g}{CELLTYPE_SHIFTS_SUFFIX}"))
    m = read_json(files.get(f"{g}{METRICS_SUFFIX}")) or {}
    mode = (m.get("bulk_qc") or {}).get("bulk_shift", "none")
    if shifts is None:
        parts.append(f"<p class='muted'>Bulk-informed generation: {esc(mode)} (no per-type shifts).</p>")
    else:
        parts.append(f"<h3>Per-type shifts from the bulk ({esc(mode)})</h3>"
                     f"<p class='muted'>{len(shifts)} (type, gene) shifts applied to the generated cells; "
                     f"the largest {min(SHIFT_ROWS, len(shifts))} (all in {esc(g)}.celltype_shifts.csv).</p>")
        if len(shifts):
            per = shifts.assign(up=shifts["log2fc"] > 0).groupby(CELLTYPE)["up"].agg(
                n_up="sum", n_shifted="size")
            per["n_down"] = per["n_shifted"] - per["n_up"]
            parts.append(grid([df_table(per[["n_up", "n_down"]].astype(int), index_label="cell type")],
                               [df_table(shifts.head(SHIFT_ROWS), index=False, digits=2)]))
    return "\n".join(parts)
