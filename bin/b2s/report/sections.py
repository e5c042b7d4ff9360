"""Run-level sections of the report (b2s.report.build): summary, fractions, bulk input, fit, between
groups, training, parameters and versions, stage summaries and the file index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from b2s._constants import (
    CELL_TARGETS_FILE,
    CELLTYPE,
    COMPOSITION_CONTRAST_FILE,
    COMPOSITION_CONTRAST_PLOT,
    FILTER_SUMMARY_SUFFIX,
    FRACTIONS_BARPLOT_FILE,
    FRACTIONS_FILE,
    FRACTIONS_SUMMARY_FILE,
    GROUP,
    IDENTIFIABILITY_SUFFIX,
    LOSS_PLOT_FILE,
    METRICS_SUFFIX,
    N_CELLS,
    PREPARE_SUMMARY_FILE,
    PREPROCESS_SUMMARY_FILE,
    SAMPLE,
    SAMPLE_FRACTIONS_FILE,
    TASK_WARNINGS_TABLE,
    TRAIN_SUMMARY_FILE,
)
from b2s.report.groups import overview, structure_cards
from b2s.report.inputs import (
    STAGE_SUMMARIES,
    group_names,
    parse_versions,
    read_csv,
    read_json,
    warning_lines,
)
from b2s.report.markup import card, details, df_table, esc, fmt, grid, human, img, is_num, kv_table, pct, secs, td
from b2s.report.run_params import display_value


def section_summary(groups: list[str], files: dict[str, Path], params: dict[str, Any]) -> str:
    """At-a-glance facts of the run, then one row per group linking to its section."""
    parts = ["<h2 id='summary'>Summary</h2>"]
    metrics = {g: read_json(files.get(f"{g}{METRICS_SUFFIX}")) or {} for g in groups}
    filt = {g: read_json(files.get(f"{g}{FILTER_SUMMARY_SUFFIX}")) or {} for g in groups}

    def total(key: str, fkey: str) -> int | None:
        vals = [metrics[g].get(key, filt[g].get(fkey)) for g in groups]
        vals = [v for v in vals if is_num(v)]
        return int(sum(vals)) if vals else None

    n_gen, n_kept = total("n_generated", "n_cells_in"), total("n_filtered", "n_cells_out")
    rs = [metrics[g]["marker_r_mean"] for g in groups if is_num(metrics[g].get("marker_r_mean"))]
    train = read_json(files.get(TRAIN_SUMMARY_FILE)) or {}
    frac = read_json(files.get(FRACTIONS_SUMMARY_FILE)) or {}
    prep = read_json(files.get(PREPROCESS_SUMMARY_FILE)) or {}
    fparams = frac.get("params") if isinstance(frac.get("params"), dict) else {}
    method = frac.get("method") or fparams.get("method")
    cards = [card(esc(len(groups)), "groups")]
    if n_gen is not None:
        cards.append(card(esc(fmt(n_gen)), "cells generated"))
    if n_kept is not None:
        kept = f" ({pct(n_kept / n_gen)})" if n_gen else ""
        cards.append(card(esc(fmt(n_kept) + kept), "cells kept after filtering"))
    if rs:
        cards.append(card(esc(f"{np.mean(rs):.3f}"), "marker r vs reference (mean over groups)"))
    ident = [(metrics[g]["n_celltypes_identified"], metrics[g]["n_celltypes_assessed"]) for g in groups
             if is_num(metrics[g].get("n_celltypes_identified")) and metrics[g].get("n_celltypes_assessed")]
    if ident:
        k, n = min(ident, key=lambda kn: kn[0] / kn[1])
        cls = " class='warn'" if any(metrics[g].get("warnings") for g in groups) else ""
        cards.append(card(f"<span{cls}>{k}/{n}</span>",
                           "cell types told apart" + (" (lowest group)" if len(groups) > 1 else "")))
    typ = [(metrics[g]["typing_accuracy"], metrics[g].get("typing_accuracy_reference")) for g in groups
           if is_num(metrics[g].get("typing_accuracy"))]
    if typ:
        acc, ref_acc = min(typ, key=lambda t: t[0])
        cls = " class='warn'" if any(metrics[g].get("warnings") for g in groups) else ""
        ref_txt = f" / {float(ref_acc):.2f}" if is_num(ref_acc) else ""
        cards.append(card(f"<span{cls}>{float(acc):.2f}{esc(ref_txt)}</span>",
                           "kNN typing accuracy, generated / reference cells"
                           + (" (lowest group)" if len(groups) > 1 else "")))
    cards += structure_cards(groups, metrics)
    if train:
        cards.append(card(esc(fmt(train.get("device"))), "training device"))
        ep = fmt(train.get("epochs_run"))
        if is_num(train.get("best_epoch")):
            ep += f" (best {fmt(train['best_epoch'])})"
        cards.append(card(esc(ep), "epochs"))
    elif params.get("vae_weights"):
        cards.append(card("pretrained", "VAE weights (no training)"))
    if method:
        cards.append(card(esc(method), "fraction method"))
    if is_num(prep.get("n_cells")):
        genes = prep.get("n_genes_shared")
        cards.append(card(esc(fmt(prep["n_cells"])),
                           "reference cells" + (f" &middot; {esc(fmt(genes))} shared genes"
                                                if is_num(genes) else "")))
    if "seed" in params:
        cards.append(card(esc(fmt(params["seed"])), "seed"))
    parts.append("<div class='cards'>" + "".join(cards) + "</div>")
    # warnings first, above the cards: the run may look fine otherwise
    parts[1:1] = [f'<p class="note warn"><b>WARNING {esc(where)}</b>: {esc(w)}</p>'
                  for where, w in warning_lines(groups, metrics, files.get(TASK_WARNINGS_TABLE), params)]
    parts.append("<h3 id='groups'>Groups</h3>" + overview(groups, files))
    return "\n".join(parts)


def section_fractions(files: dict[str, Path]) -> str:
    parts = ["<h2 id='fractions'>Cell-type fractions</h2>"]
    summ = read_json(files.get(FRACTIONS_SUMMARY_FILE))
    if summ:
        sp = summ.get("params") if isinstance(summ.get("params"), dict) else {}
        method = summ.get("method") or sp.get("method")
        if method:
            parts.append(f"<p>Estimated from the bulk profiles with method <b>{esc(method)}</b>"
                         "; values are fractions of cells (each group sums to 1).</p>")
    frac = read_csv(files.get(FRACTIONS_FILE), index_col=0)
    if frac is not None:
        frac = frac.rename(index=group_names(files))  # display names as given
    parts.append(grid([df_table(frac.T, index_label="cell type") if frac is not None
                        else '<p class="note">fractions.csv not found.</p>'],
                       [img(files.get(FRACTIONS_BARPLOT_FILE), "Estimated fractions per group")]))
    samples = read_csv(files.get(SAMPLE_FRACTIONS_FILE), index_col=0)
    if samples is not None and len(samples):
        parts.append(details("Fractions per sample (sample_fractions.csv)",
                              df_table(samples.T, index_label="cell type")))
    targets = read_csv(files.get(CELL_TARGETS_FILE), dtype={GROUP: str, CELLTYPE: str})
    if targets is not None and {GROUP, CELLTYPE, N_CELLS} <= set(targets.columns):
        pivot = targets.pivot_table(index=CELLTYPE, columns=GROUP, values=N_CELLS,
                                    aggfunc="sum", sort=False)
        pivot.loc["total"] = pivot.sum()
        pivot.columns.name = None
        pivot = pivot.rename(columns=group_names(files))
        parts.append("<h3>Target cell numbers (cell_targets.csv)</h3>"
                     "<p class='muted'>Cells to generate per cell type and group.</p>"
                     + df_table(pivot.astype("Int64"), index_label="cell type",
                                 total_row="total"))
    return "\n".join(parts)


def section_bulk_input(files: dict[str, Path]) -> str:
    """How the bulk was read (prepare_summary.json decisions), its units, the rule that set the
    cell numbers (fractions_summary.json) and the group names as given vs in file names."""
    prep = read_json(files.get(PREPARE_SUMMARY_FILE)) or {}
    bulk = prep.get("bulk") or {}
    frac = read_json(files.get(FRACTIONS_SUMMARY_FILE)) or {}
    rule = frac.get("cell_number_rule") or {}
    if not bulk and not rule:
        return ""
    parts = ["<h2 id='bulk-input'>Bulk input</h2>"]
    info = {"table": bulk.get("table_shape"), "units": bulk.get("units"),
            "cell numbers": f"{rule.get('rule')}: {rule.get('description')}" if rule else None}
    libs = sorted(((frac.get("counting_noise") or {}).get("effective_library") or {}).values())
    if libs:  # wls on TPM/FPKM: no library size, the counting noise was fitted per sample
        info["counting noise"] = f"fitted from the residuals: effective library {libs[0]:.3g}-{libs[-1]:.3g} reads"
    parts.append(kv_table({k: v for k, v in info.items() if v is not None}))
    decisions = [d.get("message", "") for d in bulk.get("decisions") or []]
    if decisions:
        parts.append("<p class='muted'>Decisions made while reading the inputs:</p><ul>"
                     + "".join(f"<li>{esc(d)}</li>" for d in decisions) + "</ul>")
    names = (prep.get("groups") or {}).get("names") or {}
    if any(str(k) != str(v) for k, v in names.items()):
        df = pd.DataFrame({"group (as given)": list(names.values()), "file name": list(names.keys())})
        parts.append(df_table(df, index=False))
    return "\n".join(parts)


def section_fit(files: dict[str, Path]) -> str:
    """Goodness of fit per sample (fractions_summary.json): how well each bulk is rebuilt from
    its fractions and the reference's per-type profiles; unexplained samples are named first."""
    summ = read_json(files.get(FRACTIONS_SUMMARY_FILE)) or {}
    gof = summ.get("goodness_of_fit")
    if not isinstance(gof, dict) or not gof.get("samples"):
        return ""
    fit = pd.DataFrame(gof["samples"]).T
    thr = gof.get("thresholds", {})
    parts = ["<h3 id='fraction-fit'>Goodness of fit per sample</h3>",
             "<p class='muted'>Each bulk sample against the bulk its fractions reconstruct from the "
             "reference's per-type mean profiles, on the marker genes: <i>fit r</i> = Pearson r of "
             "log1p(CPM), <i>residual</i> = share of marker reads misplaced (0 = perfect). A sample is "
             f"flagged when fit r &lt; {fmt(thr.get('min_fit_r'))} or residual &gt; "
             f"{fmt(thr.get('max_residual'))}.</p>"]
    bad = [s for s, row in fit.iterrows() if not bool(row.get("explained", True))]
    if bad:
        parts.append(f"<p class='warn'><b>Warning:</b> the reference explains {len(bad)} sample(s) poorly "
                     f"({esc(', '.join(map(str, bad[:10])))}{', ...' if len(bad) > 10 else ''}): a cell type "
                     "may be missing from the reference, or the tissue differs; treat their fractions with "
                     "caution.</p>")
    table = fit[["fit_r", "residual"]].astype(float)
    table["explained"] = ["yes" if bool(v) else "NO" for v in fit["explained"]]
    parts.append(df_table(table, index_label=SAMPLE, digits=3))
    return "\n".join(parts)


def section_between_groups(groups: list[str], files: dict[str, Path]) -> str:
    """Composition change between groups (composition_contrast.csv) and, per group, the per-type
    expression changes from the bulk (``--bulk_shift contrast``): DE tables and what was not identifiable."""
    parts = ["<h2 id='between'>Between groups</h2>"]
    frac = read_csv(files.get(FRACTIONS_FILE), index_col=0)  # the cohort's groups, whatever QC ran
    if (len(frac) if frac is not None else len(groups)) < 2:
        parts.append("<p class='muted'>One group: nothing to compare. Per-type shifts against the reference "
                     "(<code>--bulk_shift weighted</code>) stay opt-in: they also absorb the platform "
                     "differences every sample shares with the reference.</p>")
        return "\n".join(parts)
    cc = read_csv(files.get(COMPOSITION_CONTRAST_FILE), dtype={GROUP: str, CELLTYPE: str})
    if cc is not None and len(cc):
        flagged = cc[cc["excludes_0"].astype(str).str.lower() == "true"]
        parts.append("<h3>Composition change</h3><p class='muted'>Change of each cell type's fraction in a group "
                     f"vs {esc(cc['versus'].iloc[0])}, 95 % interval from a bootstrap over samples "
                     f"(composition_contrast.csv); {len(flagged)} of {len(cc)} intervals exclude 0 "
                     "(filled points).</p>"
                     + grid([img(files.get(COMPOSITION_CONTRAST_PLOT), "Composition change between groups")],
                             [df_table(flagged[[GROUP, CELLTYPE, "change", "ci_low", "ci_high"]], index=False)]
                             if len(flagged) else []))
    rows = []
    for g in groups:
        ident = read_csv(files.get(f"{g}{IDENTIFIABILITY_SUFFIX}"), dtype={CELLTYPE: str})
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
        parts.append(df_table(pd.DataFrame(rows), index=False, digits=3))
    return "\n".join(parts)


def section_training(files: dict[str, Path], params: dict[str, Any]) -> str:
    parts = ["<h2 id='training'>VAE training</h2>"]
    summ = read_json(files.get(TRAIN_SUMMARY_FILE))
    plot = files.get(LOSS_PLOT_FILE)
    if summ is None and plot is None:
        why = ("pretrained weights were given (--vae_weights), so no training ran"
               if params.get("vae_weights") else "no training outputs were found")
        parts.append(f'<p class="note">No loss plot: {esc(why)}.</p>')
        return "\n".join(parts)
    left = []
    if summ is not None:
        keys = ["device", "epochs_run", "best_epoch", "best_loss", "seconds", "resumed_from"]
        shown = {k: summ[k] for k in keys if k in summ}
        shown.update({k: v for k, v in summ.items()
                      if k not in shown and k != "params" and not isinstance(v, (dict, list))})
        extra = summ.get("extra")
        if isinstance(extra, dict):
            shown.update({k: v for k, v in extra.items()
                          if k not in shown and not isinstance(v, (dict, list))})
        fmts = {"seconds": secs, "seconds_per_epoch": lambda v: (
            f"{1000 * float(v):.0f} ms" if is_num(v) and float(v) < 1 else secs(v)),
            "best_loss": lambda v: f"{float(v):.4f}" if is_num(v) else fmt(v),
            "resumed_from": lambda v: "no (fresh start)" if v is None else fmt(v)}
        left.append(kv_table(shown, formatters=fmts))
    else:
        left.append('<p class="note">train_summary.json not found.</p>')
    parts.append(grid(left, [img(plot, "Training loss")]))
    return "\n".join(parts)


def section_run(params: dict[str, Any], versions_yaml: str | None) -> str:
    """Run parameters (the values used: b2s.report.run_params; those the run decided are marked)
    and software versions (reference material: placed after the results)."""
    parts = ["<h2 id='run'>Run parameters and software</h2>"]
    decided = params.get("decided") if isinstance(params.get("decided"), dict) else {}
    if params:
        items = sorted((k, v) for k, v in params.items() if k != "decided")
        half = (len(items) + 1) // 2

        def ptable(chunk: list[tuple[str, Any]]) -> str:
            rows = []
            for k, v in chunk:
                v, marker = display_value(k, v, decided)
                text = esc(fmt(v))
                if marker:
                    text += f" <span class='muted'>({esc(marker)})</span>"
                path_like = isinstance(v, str) and ("/" in v or "\\" in v)
                # values are heterogeneous (paths, flags, numbers): all left-aligned
                rows.append(f"<tr><th>{esc(k)}</th>"
                            + td(text, False, "path" if path_like else "") + "</tr>")
            return f"<table><tbody>{''.join(rows)}</tbody></table>"

        note = ("<p class='muted'>The values the run used; <i>auto</i> marks a value the pipeline "
                "decided (the parameter was unset or <code>auto</code>), with the stage that decided it. "
                "Both are in <code>pipeline_info/params.json</code> (<code>decided</code>).</p>"
                if decided else "")
        parts.append("<h3>Parameters</h3>" + note + "<div class='params'>" + ptable(items[:half])
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
        table = parse_versions(text)
        parts.append(df_table(table, index=False) if table is not None and len(table)
                     else f"<pre>{esc(text)}</pre>")
    return "\n".join(parts)


def section_stage_summaries(files: dict[str, Path]) -> str:
    parts = []
    for name in STAGE_SUMMARIES:
        d = read_json(files.get(name))
        if d is not None:
            parts.append(details(name, f"<pre>{esc(json.dumps(d, indent=2, default=str))}</pre>"))
    if not parts:
        return ""
    return "<h2 id='stages'>Stage summaries</h2>" + "\n".join(parts)


def section_files(inputs_dir: Path, files: dict[str, Path]) -> str:
    rows = []
    for name, p in sorted(files.items()):
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        rows.append({"file": esc(name),
                     "size": "NA" if size is None else human(size)})
    if not rows:
        return ""
    return ("<h2 id='files'>File index</h2><p class='muted'>Files given to the report "
            f"(from {esc(inputs_dir.name or str(inputs_dir))}); the published results hold "
            "them in per-stage folders.</p>"
            + pd.DataFrame(rows).to_html(index=False, escape=False, border=0))
