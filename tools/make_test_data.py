#!/usr/bin/env python3
"""Build the bundled test data in ``assets/test_data/`` (seeded, deterministic, offline).

Source: scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 765 genes in ``.raw``), shipped with
the scanpy package, so no download is needed. Integer counts are recovered from its
log-normalised ``.raw.X`` as ``round(expm1(raw.X) * n_counts / 1e4)``; ``obs['bulk_labels']``
gives the cell types.

Cells are split per cell type into a reference (~60%) and a held-out part (~40%). Pseudo-bulk
samples are sums of held-out cells drawn with replacement according to known fractions, so the
reference never contains the cells behind the bulk. Truth = realised per-sample fractions of
cells (number of drawn cells of each type / cells drawn).

Rebuild with ``.venv/bin/python tools/make_test_data.py`` (``--outdir`` to write elsewhere;
``tests/unit/test_test_data.py`` rebuilds into a temporary folder and compares values).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

SEED = 20240611
REF_FRACTION = 0.6
CELLS_PER_SAMPLE = 400
N_REPLICATES = 3
N_BENCH = 24
# Per-gene multiplicative noise of each pseudo-bulk sample (log-normal sigma), then Poisson:
# mimics library-prep variation on top of the sampling of cells.
GENE_NOISE_SIGMA = 0.1
# Hand-set group fractions (before normalisation), clearly different between groups so a
# fraction estimator has something to find. Keys are pbmc68k_reduced bulk_labels.
GROUP_WEIGHTS = {
    "ctrl": {
        "CD14+ Monocyte": 20, "CD19+ B": 12, "CD34+": 2, "CD4+/CD25 T Reg": 14,
        "CD4+/CD45RA+/CD25- Naive T": 8, "CD4+/CD45RO+ Memory": 12, "CD56+ NK": 8,
        "CD8+ Cytotoxic T": 10, "CD8+/CD45RA+ Naive Cytotoxic": 8, "Dendritic": 6,
    },
    "stim": {
        "CD14+ Monocyte": 6, "CD19+ B": 20, "CD34+": 4, "CD4+/CD25 T Reg": 6,
        "CD4+/CD45RA+/CD25- Naive T": 4, "CD4+/CD45RO+ Memory": 6, "CD56+ NK": 16,
        "CD8+ Cytotoxic T": 20, "CD8+/CD45RA+ Naive Cytotoxic": 6, "Dendritic": 12,
    },
}


def recover_counts() -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """Return (counts CSR int64 cells x genes, cell names, gene symbols, cell types) of pbmc68k_reduced."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = sp.csr_matrix(adata.raw.X, dtype=np.float64)
    scale = adata.obs["n_counts"].to_numpy(dtype=np.float64) / 1e4
    raw.sum_duplicates()
    counts = raw.copy()
    counts.data = np.expm1(raw.data) * np.repeat(scale, np.diff(raw.indptr))
    # Stored values were float32-rounded log1p values: the back-transform is integral to < 0.1.
    dev = np.abs(counts.data - np.round(counts.data)).max() if counts.nnz else 0.0
    if dev > 0.25 or (counts.data < 0).any():
        raise SystemExit(f"pbmc68k_reduced counts are not recoverable (max deviation {dev:.3f})")
    counts.data = np.round(counts.data)
    counts = sp.csr_matrix(counts, dtype=np.int64)
    counts.eliminate_zeros()
    return (
        counts,
        adata.obs_names.to_numpy(dtype=str),
        adata.raw.var_names.to_numpy(dtype=str),
        adata.obs["bulk_labels"].astype(str).to_numpy(),
    )


def stratified_split(types: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split cell indices per type into reference (~REF_FRACTION) and held-out; both keep every type."""
    ref, held = [], []
    for t in sorted(set(types)):
        idx = rng.permutation(np.flatnonzero(types == t))
        n_ref = min(max(int(round(REF_FRACTION * idx.size)), 2), idx.size - 1)
        ref.append(idx[:n_ref])
        held.append(idx[n_ref:])
    return np.sort(np.concatenate(ref)), np.sort(np.concatenate(held))


def pseudo_bulk(
    counts: sp.csr_matrix,
    types: np.ndarray,
    celltypes: list[str],
    fractions: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum CELLS_PER_SAMPLE cells per sample drawn by ``fractions`` (samples x types).

    Returns (bulk genes x samples int64, realised fractions samples x types).
    """
    n_samples = fractions.shape[0]
    by_type = [np.flatnonzero(types == t) for t in celltypes]
    n_cells = np.stack([rng.multinomial(CELLS_PER_SAMPLE, f) for f in fractions])  # samples x types
    # One selection matrix (samples x cells) holding how often each cell was drawn.
    rows, cols = [], []
    for s in range(n_samples):
        for k, pool in enumerate(by_type):
            if n_cells[s, k]:
                cols.append(rng.choice(pool, size=n_cells[s, k], replace=True))
                rows.append(np.full(n_cells[s, k], s))
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    select = sp.csr_matrix(
        (np.ones(rows_a.size, dtype=np.int64), (rows_a, cols_a)), shape=(n_samples, counts.shape[0])
    )
    summed = np.asarray((select @ counts).todense(), dtype=np.float64)  # samples x genes
    noise = rng.lognormal(0.0, GENE_NOISE_SIGMA, size=summed.shape)
    bulk = rng.poisson(summed * noise).astype(np.int64)
    return bulk.T, n_cells / n_cells.sum(axis=1, keepdims=True)


def write_gz_text(path: Path, text: str) -> None:
    """Write gzip text without a timestamp or file name in the header, so rebuilds are byte-stable."""
    with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
        gz.write(text.encode())


def counts_tsv(bulk: np.ndarray, genes: np.ndarray, samples: list[str], first: str = "gene") -> str:
    """Genes x samples integer table as TSV text."""
    df = pd.DataFrame(bulk, index=pd.Index(genes, name=first), columns=samples)
    buf = io.StringIO()
    df.to_csv(buf, sep="\t", lineterminator="\n")
    return buf.getvalue()


def build(outdir: Path, seed: int = SEED) -> dict:
    """Write every test-data file into ``outdir``; return a summary dict."""
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts, cells, genes, types = recover_counts()
    celltypes = sorted(set(types))
    if set(celltypes) != {t for w in GROUP_WEIGHTS.values() for t in w}:
        raise SystemExit(f"unexpected cell types in pbmc68k_reduced: {celltypes}")

    ref_idx, held_idx = stratified_split(types, rng)

    # Reference: raw integer counts as CSR float32, obs['celltype'] categorical.
    ref = ad.AnnData(
        X=sp.csr_matrix(counts[ref_idx], dtype=np.float32),
        obs=pd.DataFrame(
            {"celltype": pd.Categorical(types[ref_idx], categories=celltypes)},
            index=pd.Index(cells[ref_idx], name=None),
        ),
        var=pd.DataFrame(index=pd.Index(genes, name=None)),
    )
    ref.uns["b2s"] = json.dumps({"source": "scanpy pbmc68k_reduced", "seed": seed, "part": "reference"})
    ref.write_h5ad(outdir / "reference.h5ad", compression="gzip")

    held_counts, held_types = counts[held_idx], types[held_idx]

    # Test cohort: 2 groups x 3 replicates.
    groups = list(GROUP_WEIGHTS)
    group_frac = np.array(
        [[GROUP_WEIGHTS[g][t] for t in celltypes] for g in groups], dtype=np.float64
    )
    group_frac /= group_frac.sum(axis=1, keepdims=True)
    samples = [f"{g}_{r}" for g in groups for r in range(1, N_REPLICATES + 1)]
    sample_group = [g for g in groups for _ in range(N_REPLICATES)]
    bulk, realised = pseudo_bulk(
        held_counts, held_types, celltypes, np.repeat(group_frac, N_REPLICATES, axis=0), rng
    )
    write_gz_text(outdir / "bulk_counts.tsv.gz", counts_tsv(bulk, genes, samples))
    pd.DataFrame({"group": sample_group, "sample": samples}).to_csv(
        outdir / "samplesheet.csv", index=False, lineterminator="\n"
    )
    truth = pd.DataFrame(realised, index=pd.Index(samples, name="sample"), columns=celltypes)
    truth.to_csv(outdir / "truth_fractions.csv", float_format="%.10g", lineterminator="\n")
    truth_group = truth.groupby(pd.Index(sample_group, name="group"), sort=False).mean()
    truth_group.to_csv(outdir / "truth_group_fractions.csv", float_format="%.10g", lineterminator="\n")

    # Synthetic stable IDs (not real Ensembl IDs) for exercising --gene_map.
    ids = np.array([f"G{i + 1:06d}" for i in range(genes.size)])
    pd.DataFrame({"gene_id": ids, "symbol": genes}).to_csv(
        outdir / "gene_map.tsv", sep="\t", index=False, lineterminator="\n"
    )
    write_gz_text(outdir / "bulk_counts_ids.tsv.gz", counts_tsv(bulk, ids, samples, first="gene_id"))

    # Benchmark cohort: 24 samples with varied fractions (Dirichlet, alpha 1 = uniform on the simplex).
    bench_frac = rng.dirichlet(np.ones(len(celltypes)), size=N_BENCH)
    bench_samples = [f"bench_{i + 1:02d}" for i in range(N_BENCH)]
    bench_bulk, bench_realised = pseudo_bulk(held_counts, held_types, celltypes, bench_frac, rng)
    write_gz_text(outdir / "bench_bulk_counts.tsv.gz", counts_tsv(bench_bulk, genes, bench_samples))
    pd.DataFrame(
        bench_realised, index=pd.Index(bench_samples, name="sample"), columns=celltypes
    ).to_csv(outdir / "bench_truth_fractions.csv", float_format="%.10g", lineterminator="\n")

    return {
        "seed": seed,
        "n_reference_cells": int(ref_idx.size),
        "n_heldout_cells": int(held_idx.size),
        "n_genes": int(genes.size),
        "celltypes": celltypes,
        "samples": samples,
        "bench_samples": len(bench_samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", default=str(Path(__file__).resolve().parent.parent / "assets" / "test_data"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    summary = build(Path(args.outdir), args.seed)
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
