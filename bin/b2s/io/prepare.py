"""PREPARE_INPUTS' stage (``bin/prepare_inputs.py`` parses the command line and calls :func:`run_prepare`).

Writes bulk_counts.tsv, groups.csv, reference.h5ad and prepare_summary.json (docs/architecture.md);
inputs are never modified.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import b2s.io as bio
import b2s.io.reference as refio
from b2s._constants import BULK_COUNTS_FILE, GROUP, GROUPS_FILE, PREPARE_SUMMARY_FILE, REFERENCE_FILE, SAMPLE
from b2s.errors import WARNINGS, InputError


@dataclass(kw_only=True)
class PrepareOptions:
    """PREPARE_INPUTS' options, in the order of its command line (which the recorded ``params`` keep)."""

    bulk: str
    reference: str
    celltype_key: str
    gene_map: str | None = None
    samplesheet: str | None = None
    bulk_group: str | None = None
    bulk_units: str
    max_single_cells: int
    seed: int
    outdir: str


def resolve_options(opts: PrepareOptions) -> PrepareOptions:
    """The options checked; the empty strings Nextflow passes for an unset optional file -> None."""
    opts = replace(opts, **{key: None for key in ("gene_map", "samplesheet", "bulk_group")
                            if getattr(opts, key) in ("", "null", "None")})
    if opts.max_single_cells < 1:
        raise InputError(f"--max_single_cells {opts.max_single_cells}: must be a positive number of cells")
    return opts


def run_prepare(opts: PrepareOptions) -> None:
    """Run the stage: read and check the inputs, write their standardised copies and the summary."""
    WARNINGS.clear()  # this run's warnings only (the stage may run more than once in one process)
    opts = resolve_options(opts)
    params = bio.params_from_args(asdict(opts))
    outdir = Path(opts.outdir)
    outputs = {name: outdir / name for name in (BULK_COUNTS_FILE, GROUPS_FILE, REFERENCE_FILE,
                                                 PREPARE_SUMMARY_FILE)}
    bio.guard_inputs(outputs.values(), [opts.bulk, opts.reference, opts.gene_map, opts.samplesheet])

    # The reference first: its genes decide which gene column of the bulk is used.
    bio.log(f"reading reference {opts.reference}")
    ref = refio.read_reference(opts.reference, opts.celltype_key, opts.max_single_cells, opts.seed)
    stats = ref.uns.pop("prepare")
    bio.log(f"reference: {ref.n_obs} cells x {ref.n_vars} genes, {len(stats['celltype_counts'])} cell types "
            f"(counts from {stats['counts_source']})")

    bio.log(f"reading bulk {opts.bulk}")
    mapping = bio.read_gene_map(opts.gene_map) if opts.gene_map else None
    if mapping is not None:
        targets, target_name = mapping.index, f"--gene_map {opts.gene_map} IDs"
    else:
        targets, target_name = ref.var_names, f"--reference {opts.reference} genes"
    counts = bio.read_counts(opts.bulk, units=opts.bulk_units, targets=targets, target_name=target_name)
    decisions = list(counts.attrs.get("decisions", []))
    units = counts.attrs["units"]
    n_genes_input = counts.shape[0] + counts.attrs.get("duplicate_genes_dropped", 0)
    gene_map_stats = None
    if opts.gene_map:
        counts = bio.apply_gene_map(counts, opts.gene_map, mapping=mapping)
        gene_map_stats = counts.attrs.get("gene_map")
    bio.log(f"bulk: {counts.shape[0]} genes x {counts.shape[1]} samples ({units})")

    groups = bio.read_groups(counts, samplesheet=opts.samplesheet, bulk_group=opts.bulk_group)
    decisions += groups.attrs.get("decisions", [])
    unused = [s for s in counts.columns if s not in set(groups[SAMPLE])]
    if unused:
        # Kept in bulk_counts.tsv: DESeq2 size factors use every sample, as in the seed.
        bio.log(f"note: {len(unused)} bulk samples are in no group ({bio.examples(unused)}); "
                "they are kept for normalisation only")
    n_groups = groups[GROUP].nunique()
    bio.log(f"groups: {n_groups} ({bio.examples(groups['name'].unique())})")

    shared = bio.check_shared_genes(counts.index, ref.var_names, f"--bulk {opts.bulk}",
                                    f"--reference {opts.reference}", bulk_samples=counts.columns,
                                    gene_map=opts.gene_map)
    bio.log(f"shared genes: {len(shared)}")

    bio.write_counts(counts, outputs[BULK_COUNTS_FILE])
    bio.write_groups(groups, outputs[GROUPS_FILE])
    bio.write_h5ad(ref, outputs[REFERENCE_FILE], params=params)
    summary = {
        "bulk": {
            "n_genes_input": int(n_genes_input),
            "n_genes": int(counts.shape[0]),
            "duplicate_genes_dropped": int(counts.attrs.get("duplicate_genes_dropped", 0)),
            "gene_map": gene_map_stats,
            "n_samples": int(counts.shape[1]),
            "samples": list(counts.columns),
            "samples_without_group": unused,
            "units": units,
            "table_shape": counts.attrs.get("table_shape"),
            "decisions": decisions,
            # None for TPM/FPKM: sums of normalised values are no library sizes
            "library_sizes": {s: int(v) for s, v in counts.sum(axis=0).items()} if units == "counts" else None,
        },
        "groups": {
            "n_groups": int(n_groups),
            "source": "samplesheet" if opts.samplesheet else ("bulk_group" if opts.bulk_group else "each_sample"),
            "members": {g: list(s) for g, s in groups.groupby(GROUP, sort=False)[SAMPLE]},
            # display name as given per group ID (the file-name-safe slug); renamed: only those that differ
            "names": dict(zip(groups[GROUP], groups["name"])),
            "renamed_for_files": groups.attrs.get("slugs", {}),
        },
        "reference": {
            "n_cells_before": stats["n_cells_input"],
            "n_cells_after": int(ref.n_obs),
            "n_genes": int(ref.n_vars),
            "counts_source": stats["counts_source"],
            "n_cells_unlabelled_dropped": stats["n_cells_unlabelled_dropped"],
            "duplicate_genes_renamed": stats["duplicate_genes_renamed"],
            "duplicate_cells_renamed": stats["duplicate_cells_renamed"],
            "celltype_counts_before": stats["celltype_counts_input"],
            "celltype_counts": stats["celltype_counts"],
            "n_cells_zero_counts_dropped": stats["n_cells_zero_counts"],
        },
        "warnings": list(WARNINGS),  # every WARNING line of this stage, in order
        "n_shared_genes": len(shared),
        **bio.provenance(params, "PREPARE_INPUTS"),
    }
    bio.write_json(outputs[PREPARE_SUMMARY_FILE], summary)
    bio.log(f"wrote {', '.join(str(p) for p in outputs.values())}")
