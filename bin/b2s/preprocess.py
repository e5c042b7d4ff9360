"""PREPROCESS: bulk DESeq2 median-of-ratios (counts; TPM/FPKM: scaled per sample to 1e6) + log10
group profiles; single-cell normalize_total + log1p; the model input (reference cells x genes
shared with the bulk).

Matches omicverse 2.3.2's ``bulk_preprocess_lazy`` / ``single_preprocess_lazy`` / ``prepare_input``
in behaviour: the whole bulk matrix is normalised together, then averaged per group; the
reference is normalised on all of its genes and only then restricted to the shared genes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from b2s._constants import (
    BULK_PROFILES_FILE,
    COUNTS_LAYER,
    GENE,
    GROUP,
    MODEL_INPUT_FILE,
    PREPROCESS_SUMMARY_FILE,
    SAMPLE,
)
from b2s.errors import InputError

TARGET_SUM = 1e4


def size_factors(counts: pd.DataFrame) -> pd.Series:
    """DESeq2 median-of-ratios size factor per sample (columns of a genes x samples matrix).

    The reference is the per-gene geometric mean over samples; genes with a zero in any sample
    have geometric mean 0 and are left out of the reference, as in DESeq2.
    """
    x = counts.to_numpy(dtype=np.float64)
    if x.shape[1] == 0:
        raise InputError("bulk_counts.tsv: no sample columns; give at least one bulk sample")
    usable = np.all(x > 0, axis=1)
    if not usable.any():
        raise InputError(
            "bulk_counts.tsv: every gene has a zero count in at least one sample, so DESeq2 size "
            "factors are undefined; drop near-empty samples or check that the matrix holds raw counts"
        )
    logs = np.log(x[usable])
    ratios = logs - logs.mean(axis=1, keepdims=True)
    return pd.Series(np.exp(np.median(ratios, axis=0)), index=counts.columns, name="size_factor")


def deseq2_normalize(counts: pd.DataFrame) -> pd.DataFrame:
    """Counts divided by their sample's DESeq2 median-of-ratios size factor (genes x samples)."""
    return counts.astype(np.float64) / size_factors(counts).to_numpy()[None, :]


def per_million(values: pd.DataFrame) -> pd.DataFrame:
    """Each sample (column) scaled to sum 1e6: TPM stay TPM (up to rounding), FPKM become TPM."""
    x = values.astype(np.float64)
    tot = x.sum(axis=0).to_numpy()
    return x / np.where(tot > 0, tot, 1.0)[None, :] * 1e6


def normalise_bulk(bulk: pd.DataFrame, units: str = "counts") -> pd.DataFrame:
    """The bulk on one scale across samples: DESeq2 median-of-ratios for counts (as omicverse);
    TPM/FPKM as given, scaled per sample to sum 1e6 (:func:`per_million`): gene-length normalised
    values have no library size left to estimate, and DESeq2's size factors assume counts."""
    return deseq2_normalize(bulk) if units == "counts" else per_million(bulk)


def bulk_group_profiles(bulk: pd.DataFrame, groups: pd.DataFrame, units: str | None = None) -> pd.DataFrame:
    """Genes x groups: group mean of log10(normalised bulk + 1) (:func:`normalise_bulk`).

    All bulk samples are normalised together (as omicverse does), then averaged per group;
    groups are in order of first appearance in ``groups`` (columns ``group, sample``).
    ``units`` defaults to ``bulk.attrs['units']`` (counts when unset).
    """
    units = units or bulk.attrs.get("units", "counts")
    g = groups.astype({GROUP: str, SAMPLE: str})
    cols = pd.Index(bulk.columns.astype(str))
    missing = sorted(set(g[SAMPLE]) - set(cols))
    if missing:
        raise InputError(f"groups.csv: sample(s) {', '.join(missing)} are not columns of bulk_counts.tsv; "
                         "fix the samplesheet or the bulk matrix")
    logn = np.log10(normalise_bulk(bulk, units) + 1.0)
    logn.columns = cols
    # (samples x genes) grouped by group label -> groups x genes -> transpose
    prof = logn.T.loc[g[SAMPLE].to_numpy()].groupby(g[GROUP].to_numpy(), sort=False).mean().T
    prof.index.name = GENE
    prof.columns.name = None
    return prof


def normalize_single(adata: anndata.AnnData, target_sum: float = TARGET_SUM) -> anndata.AnnData:
    """A copy with X = log1p(counts / cell total * target_sum), float32; sparse stays sparse.

    Cells with zero counts stay zero (as scanpy's normalize_total). The input is not modified.
    """
    out = adata.copy()
    x = out.X
    if sparse.issparse(x):
        x = sparse.csr_matrix(x, dtype=np.float32, copy=True)
        tot = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
        scale = np.where(tot > 0, target_sum / np.where(tot > 0, tot, 1.0), 1.0).astype(np.float32)
        # CSR rows are contiguous in .data: scale each stored value by its row's factor
        x.data *= np.repeat(scale, np.diff(x.indptr))
        np.log1p(x.data, out=x.data)
    else:
        x = np.asarray(x, dtype=np.float32).copy()
        tot = x.sum(axis=1, dtype=np.float64)
        scale = np.where(tot > 0, target_sum / np.where(tot > 0, tot, 1.0), 1.0).astype(np.float32)
        x *= scale[:, None]
        np.log1p(x, out=x)
    out.X = x
    return out


def model_input(reference: anndata.AnnData, bulk_genes) -> anndata.AnnData:
    """Reference cells x genes shared with the bulk (reference gene order), log-normalised.

    Normalisation uses each cell's total over ALL reference genes (normalise first, subset
    after, as omicverse). ``obs['celltype']`` and the other obs columns are kept; the raw counts
    of the shared genes go to ``layers['counts']`` (CSR float32) and each cell's total over all
    genes to ``obs['total_counts']``, for GENERATE's count sampling.
    """
    genes = pd.Index(reference.var_names.astype(str))
    keep = genes.isin(pd.Index(pd.Series(list(bulk_genes), dtype=str)))
    if not keep.any():
        raise InputError(
            "bulk_counts.tsv / reference.h5ad: no gene symbol is shared between the bulk matrix "
            f"(e.g. {', '.join(map(str, list(bulk_genes)[:3]))}) and the reference (e.g. "
            f"{', '.join(genes[:3])}); map the bulk IDs to symbols with --gene_map"
        )
    norm = normalize_single(reference)
    cols = np.flatnonzero(keep)
    out = norm[:, cols].copy()
    if sparse.issparse(out.X):
        out.X = sparse.csr_matrix(out.X, dtype=np.float32)
    # GENERATE draws counts from the reference's libraries and per-gene dispersion (b2s.generate.cells)
    raw = reference.X
    out.obs["total_counts"] = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
    out.layers[COUNTS_LAYER] = sparse.csr_matrix(raw[:, cols], dtype=np.float32) if sparse.issparse(raw) \
        else sparse.csr_matrix(np.asarray(raw)[:, cols], dtype=np.float32)
    return out


@dataclass(kw_only=True)
class PreprocessOptions:
    """PREPROCESS' options (``bin/preprocess.py``), in the order of its command line (which the
    recorded ``params`` keep)."""

    bulk: str
    groups: str
    reference: str
    outdir: str


def run_preprocess(opts: PreprocessOptions) -> None:
    """The PREPROCESS stage: normalise the bulk and the reference; write the model input and group profiles."""
    from b2s.io.artifacts import params_from_args, read_prepared, write_h5ad, write_json

    params = params_from_args(asdict(opts))
    out = Path(opts.outdir)
    out.mkdir(parents=True, exist_ok=True)
    bulk, groups, reference = read_prepared(opts.bulk, opts.groups, opts.reference)
    print(f"preprocessing: {bulk.shape[0]} bulk genes x {bulk.shape[1]} samples, "
          f"reference {reference.n_obs} cells x {reference.n_vars} genes", flush=True)
    profiles = bulk_group_profiles(bulk, groups)
    units = bulk.attrs.get("units", "counts")
    sf = size_factors(bulk) if units == "counts" else None
    model = model_input(reference, bulk.index)
    profiles.to_csv(out / BULK_PROFILES_FILE)
    write_h5ad(model, out / MODEL_INPUT_FILE, params=params)
    write_json(out / PREPROCESS_SUMMARY_FILE, {
        "n_cells": int(model.n_obs),
        "n_genes_shared": int(model.n_vars),
        "n_bulk_genes": int(bulk.shape[0]),
        "n_reference_genes": int(reference.n_vars),
        "groups": list(profiles.columns),
        "bulk_units": units,
        "bulk_normalisation": "deseq2_median_of_ratios" if sf is not None else "scaled_per_sample_to_1e6",
        "size_factors": {k: round(float(v), 6) for k, v in sf.items()} if sf is not None else None,
        "target_sum": TARGET_SUM,
    }, params=params)
    print(f"model input: {model.n_obs} cells x {model.n_vars} shared genes; "
          f"bulk profiles for {profiles.shape[1]} group(s)", flush=True)
