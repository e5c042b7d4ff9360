"""QC's stage (``bin/qc.py`` parses the command line and calls :func:`run_qc`).

Several groups are assessed one after the other: the reference, its wilcoxon markers and the kNN
classifier fit on it are computed once, and each group's outputs are exactly those of a run with
that group alone (their ``params``: :class:`QcOptions` with that group's files).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, replace

from b2s._constants import (
    BULK_QC_SUFFIX,
    BULK_RESIDUALS_SUFFIX,
    BULK_SCATTER_SUFFIX,
    BULK_SHIFT_KEY,
    CELLPROP_PLOT_SUFFIX,
    CELLPROP_SUFFIX,
    CELLTYPE,
    CORRELATION_MATRIX_SUFFIX,
    CORRELATION_PLOT_SUFFIX,
    CORRELATION_SUFFIX,
    MDE_PLOT_SUFFIX,
    METRICS_SUFFIX,
    N_CELLS,
)

#: defaults of the options the pipeline does not pass: cells per source (reference, filtered) drawn
#: for the MDE plot; genes with the largest generated-vs-bulk residuals in <group>.bulk_residuals.csv
MDE_MAX_CELLS = 3000
BULK_TOP_GENES = 50


@dataclass(kw_only=True)
class QcOptions:
    """QC's options, in the order of its command line (which the recorded ``params`` keep).
    ``generated``, ``filtered`` and ``group``: lists of one file/name per group for :func:`run_qc`, one
    each for :func:`qc_group`;
    ``bulk``/``groups`` None: no QC against the bulk."""

    generated: str | list[str]
    filtered: str | list[str]
    reference: str
    targets: str
    group: str | list[str]
    top_markers: int
    seed: int
    mde_max_cells: int = MDE_MAX_CELLS
    bulk: str | None = None
    groups: str | None = None
    bulk_top_genes: int = BULK_TOP_GENES
    outdir: str


def bulk_section(opts: QcOptions, g: str, out: dict[str, str], reference, generated, filtered,
                 targets) -> dict:
    """QC against the group's bulk (b2s.qc.bulk): writes its table, residuals and scatter; returns its metrics."""
    import b2s.plots as plots
    import b2s.qc.bulk as bulkqc
    from b2s.qc.metrics import ordered_types

    bulk, groups = bulkqc.read_bulk_inputs(opts.bulk, opts.groups)
    types = ordered_types(reference)
    res = bulkqc.bulk_qc(bulkqc.group_bulk(bulk, groups, g), generated, filtered, reference,
                         bulkqc.fractions_of(targets, types), types, top_n=opts.bulk_top_genes)
    res["summary"].to_csv(out[BULK_QC_SUFFIX], index=False, float_format="%.6g")
    res["residuals"].to_csv(out[BULK_RESIDUALS_SUFFIX], float_format="%.6g")
    plots.plot_bulk_scatter(res["log_cpm"], out[BULK_SCATTER_SUFFIX], scores=res["summary"],
                            title=f"Pseudo-bulk vs bulk: {g}")
    m = res["metrics"]
    fmt = lambda v: "NA" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"[qc] {g}: vs bulk over {m['generated']['n_genes']} genes (log2 CPM): generated r "
          f"{fmt(m['generated']['pearson_r'])}, R2 {fmt(m['generated']['var_explained'])}; composition only r "
          f"{fmt(m['composition_expected']['pearson_r'])}, R2 {fmt(m['composition_expected']['var_explained'])}",
          flush=True)
    try:
        m["bulk_shift"] = str(json.loads(generated.uns.get(BULK_SHIFT_KEY, "{}")).get("mode", "none"))
    except (TypeError, ValueError, AttributeError):
        m["bulk_shift"] = "none"
    return m


def run_qc(opts: QcOptions) -> None:
    """Run the QC of each group of ``opts.group`` (one ``generated`` and ``filtered`` file per group,
    in order) and write its plots, tables and metrics."""
    import b2s.plots as plots
    import b2s.qc as qc
    from b2s.errors import InputError, warning_group

    if opts.top_markers < 1:
        raise InputError(f"--top_markers {opts.top_markers}: must be >= 1")
    if opts.mde_max_cells < 3:
        raise InputError(f"--mde_max_cells {opts.mde_max_cells}: must be >= 3")
    if bool(opts.bulk) != bool(opts.groups):
        raise InputError("--bulk and --groups go together (QC against the bulk); pass both or neither")
    if not len(opts.group) == len(opts.generated) == len(opts.filtered):
        raise InputError(f"{len(opts.generated)} --generated and {len(opts.filtered)} --filtered file(s) for "
                         f"{len(opts.group)} --group name(s); pass one of each per group, in the same order")
    reference = qc.read_cells(opts.reference, "--reference", "PREPROCESS")
    # what depends on the reference alone, computed once for every group of the task
    shared = {"reference": reference, "palette": plots.celltype_palette(reference.obs[CELLTYPE].astype(str)),
              "markers": None, "typer": None}
    for gen, filt, g in zip(opts.generated, opts.filtered, opts.group):
        # the recorded params are those of a one-group run: outputs do not depend on batching
        with warning_group(g if len(opts.group) > 1 else None):
            qc_group(replace(opts, generated=gen, filtered=filt, group=g), shared)


def qc_group(opts: QcOptions, shared: dict) -> None:
    """The QC of one group (``opts`` with one ``generated``, ``filtered`` and ``group``); ``shared`` holds
    the reference and what is computed from it alone (filled on first use)."""
    import b2s.io as io
    import b2s.plots as plots
    import b2s.qc as qc
    import b2s.qc.structure as structure
    from b2s.cluster.filter import filter_summary
    from b2s.errors import InputError, warn

    g = opts.group
    # the output paths by their suffix (b2s._constants), in the order of the console's "wrote" line
    out = {k: os.path.join(opts.outdir, g + k) for k in (
        CELLPROP_PLOT_SUFFIX, CELLPROP_SUFFIX, CORRELATION_PLOT_SUFFIX, CORRELATION_SUFFIX,
        CORRELATION_MATRIX_SUFFIX, MDE_PLOT_SUFFIX, METRICS_SUFFIX)}
    if opts.bulk:
        out.update({k: os.path.join(opts.outdir, g + k) for k in (
            BULK_QC_SUFFIX, BULK_RESIDUALS_SUFFIX, BULK_SCATTER_SUFFIX)})
    io.guard_inputs(out.values(), [opts.generated, opts.filtered, opts.reference, opts.targets,
                                   opts.bulk, opts.groups])
    os.makedirs(opts.outdir, exist_ok=True)
    params = io.params_from_args(asdict(opts))

    reference = shared["reference"]
    generated = qc.read_cells(opts.generated, "--generated", "GENERATE")
    filtered = qc.read_cells(opts.filtered, "--filtered", "FILTER")
    targets = qc.read_targets(opts.targets, g)
    print(f"[qc] {g}: reference {reference.n_obs} cells, generated {generated.n_obs}, "
          f"filtered {filtered.n_obs}, targets {int(targets[N_CELLS].sum())}", flush=True)
    if filtered.n_obs and not set(filtered.obs_names) <= set(generated.obs_names):
        raise InputError(f"--filtered {opts.filtered} has cells not in --generated "
                         f"{opts.generated}; pass files of the same group and run")
    palette = shared["palette"]

    props = qc.celltype_proportions(reference, targets, generated, filtered)
    props.to_csv(out[CELLPROP_SUFFIX], float_format="%.6g")
    plots.plot_cellprop(props, out[CELLPROP_PLOT_SUFFIX], title=f"Cell-type proportions: {g}",
                        palette=palette)

    if shared["markers"] is None:
        print(f"[qc] {g}: wilcoxon markers (top {opts.top_markers}) per reference type", flush=True)
        shared["markers"] = qc.reference_markers(reference, opts.top_markers)
    markers = shared["markers"]
    # As in the seed, the correlation is taken on the cells that survive FILTER.
    assessed = filtered if filtered.n_obs else generated
    summary, matrix = qc.marker_correlation(reference, assessed, opts.top_markers, markers=markers)
    summary_unf, _ = qc.marker_correlation(reference, generated, opts.top_markers, markers=markers)
    summary.to_csv(out[CORRELATION_SUFFIX], index=False, float_format="%.6g")
    matrix.to_csv(out[CORRELATION_MATRIX_SUFFIX], float_format="%.6g")
    plots.plot_correlation(matrix, out[CORRELATION_PLOT_SUFFIX],
                           title=f"Marker expression correlation: {g}")
    r = summary["pearson_r"]
    print(f"[qc] {g}: marker r over {int(summary['n_markers'].max())} genes: mean "
          f"{r.mean():.3f}, min {r.min():.3f}; NaN for {int(r.isna().sum())} type(s)", flush=True)

    ref_s = qc.subsample(reference, opts.mde_max_cells, opts.seed)
    gen_s = qc.subsample(assessed, opts.mde_max_cells, opts.seed + 1)
    print(f"[qc] {g}: MDE of {ref_s.n_obs} reference + {gen_s.n_obs} generated cells", flush=True)
    coords = qc.embed(ref_s, gen_s, seed=opts.seed)
    labels = list(ref_s.obs[CELLTYPE].astype(str)) + list(gen_s.obs[CELLTYPE].astype(str))
    sources = ["reference"] * ref_s.n_obs + [
        "filtered generated" if filtered.n_obs else "generated"] * gen_s.n_obs
    plots.plot_embedding(coords, labels, out[MDE_PLOT_SUFFIX], title=f"MDE of joint PCA: {g}",
                         sources=sources, palette=palette)

    if shared["typer"] is None and assessed.n_obs and reference.n_obs >= 3:
        shared["typer"] = qc.KnnTyper(reference, seed=opts.seed)
    typing = qc.typing_summary(reference, assessed, seed=opts.seed, typer=shared["typer"])
    if typing["typing_accuracy"] is not None:
        print(f"[qc] {g}: kNN typing accuracy of generated cells (classifier fit on the reference) "
              f"{typing['typing_accuracy']:.3f}; reference cells themselves (leave-one-out) "
              f"{typing['typing_accuracy_reference']:.3f}", flush=True)
    fsum = filter_summary(generated, filtered)
    metrics = qc.qc_metrics(props, summary, params, filter_summary=fsum,
                            corr_summary_unfiltered=summary_unf, typing=typing)
    med = metrics["marker_r_margin_median"]
    print(f"[qc] {g}: {metrics['n_celltypes_identified']} of {metrics['n_celltypes_assessed']} types told "
          f"apart (own r > best other r); median margin {'NA' if med is None else f'{med:.3f}'}", flush=True)
    vae = qc.vae_identity_of(generated)
    if vae is not None:
        metrics.update(vae)
        print(f"[qc] {g}: the VAE by itself (decoded profiles before the per-type calibration) tells "
              f"{vae['vae_celltypes_identified']} of {vae['vae_celltypes_assessed']} types apart", flush=True)
    within = structure.within_type_qc(reference, assessed, vae=vae, seed=opts.seed)
    metrics.update({k: v for k, v in within.items() if k != "warnings"})
    metrics["warnings"] += within["warnings"]
    print(f"[qc] {g}: {structure.summary_line(within)}", flush=True)
    for w in metrics["warnings"]:
        warn(f"[qc] {g}: {w}", file=sys.stdout)
    if opts.bulk:
        metrics["bulk_qc"] = bulk_section(opts, g, out, reference, generated, filtered, targets)
    metrics["mde_cells"] = {"reference": int(ref_s.n_obs), "generated": int(gen_s.n_obs)}
    io.write_json(out[METRICS_SUFFIX], {"group": g, **metrics}, params=params)
    print(f"[qc] {g}: wrote {', '.join(os.path.basename(p) for p in out.values())}", flush=True)
