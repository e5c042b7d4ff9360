"""ESTIMATE_FRACTIONS' stage (``bin/estimate_fractions.py`` parses the command line and calls
:func:`run_fractions`): fractions per sample and group, target cell numbers, their plots and summary."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import b2s.fractions.estimate as fr
from b2s._constants import (
    CELL_TARGETS_FILE,
    CELLTYPE,
    COMPOSITION_CONTRAST_FILE,
    COMPOSITION_CONTRAST_PLOT,
    FRACTIONS_BARPLOT_FILE,
    FRACTIONS_FILE,
    FRACTIONS_FIT_FILE,
    FRACTIONS_SUMMARY_FILE,
    GROUP,
    N_CELLS,
    SAMPLE,
    SAMPLE_FRACTIONS_FILE,
)
from b2s.errors import InputError
from b2s.fractions.fit import MAX_RESIDUAL, MIN_FIT_R, fit_warnings, goodness_of_fit
from b2s.fractions.markers import read_markers
from b2s.io.artifacts import params_from_args, read_prepared, write_json
from b2s.io.tables import warn
from b2s.plots import plot_composition_contrast, plot_fractions
from b2s.qc.composition import composition_contrast


@dataclass(kw_only=True)
class FractionsOptions:
    """ESTIMATE_FRACTIONS' options, in the order of its command line (which the recorded ``params``
    keep); None: decided by :func:`resolve_options` (``method``) or not used."""

    bulk: str
    groups: str
    reference: str
    method: str | None = None
    markers: str | None = None
    scale_size: float
    cells_per_group: int | None = None
    seed: int
    reference_group: str | None = None
    engine: str
    outdir: str


def resolve_options(opts: FractionsOptions) -> FractionsOptions:
    """The options checked, ``method`` None replaced by the engine's default (recorded as such)."""
    if opts.method is None:
        opts = replace(opts, method="scaden" if opts.engine == "omicverse" else fr.DEFAULT_METHOD)
    if opts.markers and opts.engine == "omicverse":
        raise InputError(f"--markers {opts.markers}: curated markers work with --engine native only "
                         "(omicverse selects its own genes); drop --markers or use --engine native")
    if opts.cells_per_group is not None and opts.cells_per_group < 1:
        raise InputError(f"--cells_per_group {opts.cells_per_group} must be >= 1; use e.g. 2000, or leave it unset")
    if opts.scale_size <= 0:
        raise InputError(f"--scale_size {opts.scale_size} must be > 0; use e.g. 2 (omicverse's default)")
    return opts


def counting_noise(noise_library: dict | None, method: str, units: str) -> dict:
    """fractions_summary.json's record of how ``wls`` set each sample's counting noise: from the
    library size (counts), fitted from the residuals (TPM/FPKM), or not modelled (other methods)."""
    if noise_library:
        return {"rule": "fitted", "effective_library": {k: round(v, 1) for k, v in noise_library.items()}}
    return {"rule": "library_size" if method == "wls" and units == "counts" else "not_modelled"}


def run_fractions(opts: FractionsOptions) -> None:
    """Estimate fractions, average per group, derive target cell numbers, write outputs."""
    opts = resolve_options(opts)
    params = params_from_args(asdict(opts))
    out = Path(opts.outdir)
    out.mkdir(parents=True, exist_ok=True)
    bulk, groups, reference = read_prepared(opts.bulk, opts.groups, opts.reference)
    kwargs = {}
    if opts.markers:
        shared = sorted(set(map(str, bulk.index)) & set(map(str, reference.var_names)))
        types = sorted(set(reference.obs[CELLTYPE].astype(str)))
        kwargs["markers"] = read_markers(opts.markers, types, shared)
        print(f"using {sum(map(len, kwargs['markers'].values()))} curated markers from {opts.markers}", flush=True)
    print(f"estimating fractions: {bulk.shape[1]} samples, {reference.n_obs} reference cells, "
          f"method {opts.method}, engine {opts.engine}", flush=True)
    t0 = time.perf_counter()
    if opts.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: importing omicverse takes tens of seconds

        sample_fr = omicverse_engine.estimate_sample_fractions(bulk, reference, opts.method, opts.seed)
    else:
        sample_fr = fr.estimate_sample_fractions(bulk, reference, method=opts.method, seed=opts.seed, **kwargs)
    seconds = time.perf_counter() - t0
    marker_genes = sample_fr.attrs.get("marker_genes")
    noise_library = sample_fr.attrs.get("noise_library")
    if noise_library:
        libs = sorted(noise_library.values())
        print(f"fractions: {bulk.attrs['units']} carries no library size, so the counting noise of each sample "
              f"was fitted from its residuals: effective library {libs[0]:.3g}-{libs[-1]:.3g} reads "
              f"(median {libs[len(libs) // 2]:.3g}; fractions_summary.json counting_noise)", flush=True)
    fit = goodness_of_fit(bulk, reference, sample_fr)
    sample_fr = sample_fr[sorted(sample_fr.columns)]
    sample_fr.index.name = SAMPLE
    group_fr = fr.group_fractions(sample_fr, groups)
    targets = fr.cell_targets(bulk, groups, reference, group_fr, scale_size=opts.scale_size,
                              cells_per_group=opts.cells_per_group)
    rule = fr.cell_number_rule(bulk, opts.cells_per_group)
    print(f"cell numbers: rule {rule} ({fr.CELL_RULES[rule]}; bulk units {bulk.attrs['units']})", flush=True)

    sample_fr.to_csv(out / SAMPLE_FRACTIONS_FILE)
    group_fr.to_csv(out / FRACTIONS_FILE)
    targets.to_csv(out / CELL_TARGETS_FILE, index=False)
    fit.to_csv(out / FRACTIONS_FIT_FILE)
    for line in fit_warnings(fit):
        warn(line)
    plot_fractions(group_fr, str(out / FRACTIONS_BARPLOT_FILE),
                   title=f"Estimated cell-type fractions ({opts.method}, {opts.engine})")
    contrast = composition_contrast(sample_fr, groups, reference_group=opts.reference_group, seed=opts.seed)
    contrast.to_csv(out / COMPOSITION_CONTRAST_FILE, index=False, float_format="%.6g")
    if len(contrast):
        plot_composition_contrast(contrast, str(out / COMPOSITION_CONTRAST_PLOT),
                                  title="Composition change between groups (95 % intervals, bootstrap over samples)")
        if contrast["se"].isna().all():
            print("composition change between groups: a group has one sample, so no intervals "
                  "(composition_contrast.csv has the changes only)", flush=True)
        flagged = contrast[contrast["excludes_0"]]
        print(f"composition change between groups: {len(flagged)} of {len(contrast)} (group, type) intervals "
              f"exclude 0" + (": " + ", ".join(f"{r.group} {r.celltype} {r.change:+.3f}" for r in flagged.itertuples())
                               if len(flagged) else ""), flush=True)
    totals = fr.total_cells(bulk, groups, reference, opts.cells_per_group)
    write_json(out / FRACTIONS_SUMMARY_FILE, {
        "method": opts.method,
        "engine": opts.engine,
        "seconds": round(seconds, 3),
        "n_samples": int(sample_fr.shape[0]),
        "cell_types": list(sample_fr.columns),
        "composition_contrast": {"versus": opts.reference_group or "other groups",
                                 "n_excluding_0": int(contrast["excludes_0"].sum()) if len(contrast) else 0},
        "markers": {"source": opts.markers or "automatic", "n_genes": len(marker_genes) if marker_genes else None},
        "goodness_of_fit": {
            "thresholds": {"min_fit_r": MIN_FIT_R, "max_residual": MAX_RESIDUAL},
            "samples": {str(s): {"fit_r": round(float(r.fit_r), 4), "residual": round(float(r.residual), 4),
                                 "explained": bool(r.explained)} for s, r in fit.iterrows()},
            "n_unexplained": int((~fit["explained"]).sum()),
        },
        "bulk_units": bulk.attrs["units"],
        "counting_noise": counting_noise(noise_library, opts.method, bulk.attrs["units"]),
        "cell_number_rule": {"rule": rule, "description": fr.CELL_RULES[rule]},
        "groups": {
            g: {"n_samples": int((groups[GROUP] == g).sum()),
                "estimated_total_cells": round(totals[g], 3),
                "target_cells": int(targets.loc[targets[GROUP] == g, N_CELLS].sum())}
            for g in group_fr.index
        },
    }, params=params)
    print(f"fractions done in {seconds:.1f} s; targets: "
          + ", ".join(f"{g}={int(n)}" for g, n in targets.groupby(GROUP, sort=False)[N_CELLS].sum().items()),
          flush=True)
