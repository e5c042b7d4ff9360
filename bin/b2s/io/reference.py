"""Reading the scRNA-seq reference h5ad for PREPARE_INPUTS: only the cells that are used.

The labels (``obs[celltype_key]``) are read first, the seeded subsample is drawn from them, and
then only those rows of the count matrix (CSR, CSC or dense, from ``layers['counts']``, ``.raw``
or ``X``) and only their cell names: peak memory is set by the subsample, not by the atlas
(benchmarks/README.md, "PREPARE_INPUTS peak memory vs atlas size"). Layouts the partial reader
does not know are read whole (:class:`MemoryReference`) with the same checks.

Decisions (documented here because they change data):

* Reference counts are taken from ``layers['counts']``, else ``.raw``, else ``X``: the first
  that holds non-negative integers. Cells with no cell-type label are dropped with a warning;
  cell types with fewer than ``min_cells`` (2) labelled cells are an error (a type needs at
  least two cells for markers and generation). Duplicate cell names are made unique (note).
* Subsampling to ``max_single_cells`` is uniform at random with ``numpy.random.default_rng(seed)``
  except that each type keeps at least ``min_cells`` cells, so no type vanishes by chance.
"""

from __future__ import annotations

import os
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE
from b2s.errors import InputError
from b2s.io.h5ad import H5Reference, MemoryReference, Unsupported
from b2s.io.tables import INTEGRAL_TOL, check_exists, examples, log, warn

#: Reference cells whose totals all lie within 5 % of their median are normalised (normalize_total
#: then rounded spreads by ~1 % on 765 genes; raw cell libraries vary several-fold).
NORMALISED_CELL_TOL = 0.05


def _count_problem(x) -> str | None:
    """Why matrix ``x`` is not raw counts (None if it is): NaN, negative or non-integer values."""
    data = x.data if sp.issparse(x) else np.asarray(x)
    data = np.asarray(data, dtype=np.float64).ravel()
    if data.size == 0:
        return None
    if np.isnan(data).any():
        return f"{int(np.isnan(data).sum())} NaN values"
    if (data < 0).any():
        return f"negative values (min {data.min():g})"
    off = np.abs(data - np.rint(data)) > INTEGRAL_TOL
    if off.any():
        return f"non-integer values (e.g. {data[np.flatnonzero(off)[0]]:g}), it looks normalised/log-transformed"
    return None


def subsample_indices(labels: np.ndarray, max_cells: int, seed: int, min_cells: int = 2) -> np.ndarray:
    """Sorted indices of at most ``max_cells`` cells chosen at random with ``default_rng(seed)``.

    Each label keeps ``min(min_cells, its size)`` cells so no type disappears by chance; the
    remaining places are filled uniformly from the other cells. All cells when ``n <= max_cells``.
    """
    n = labels.size
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(labels, sort=True)
    order = rng.permutation(n)
    # First `min_cells` cells of each label in the random order are reserved.
    rank = pd.Series(codes[order]).groupby(codes[order]).cumcount().to_numpy()
    reserved = order[rank < min_cells]
    if reserved.size > max_cells:
        raise InputError(f"--max_single_cells {max_cells}: too small to keep {min_cells} cells of each of the "
                         f"{uniques.size} cell types; raise it to at least {reserved.size}")
    rest = order[rank >= min_cells]
    chosen = np.concatenate([reserved, rest[: max_cells - reserved.size]])
    return np.sort(chosen)


def _cannot_read(what: str, err: Exception) -> InputError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return InputError(f"{what}: cannot be read as h5ad ({msg[:150]}); provide an AnnData .h5ad file "
                      "(e.g. written by adata.write_h5ad)")


def read_reference(path: str | os.PathLike, celltype_key: str, max_single_cells: int | None = None,
                   seed: int = 0, min_cells: int = 2) -> ad.AnnData:
    """Read, validate, standardise and subsample the scRNA-seq reference, reading only what is used.

    The cell names and ``obs[celltype_key]`` are read first; the seeded subsample is chosen from
    the labels (:func:`subsample_indices`); then only those cells' rows of the counts matrix are
    read from disk (CSR: their entries only; CSC: one streaming pass in blocks; dense: their rows),
    so peak memory is set by the subsample, not the atlas. Layouts the partial reader does not
    know (e.g. h5ad files from anndata < 0.7) are read whole, with a log line.

    Returns an AnnData with X = raw counts (CSR float32), ``obs['celltype']`` categorical
    (sorted categories, no other obs columns), unique var/obs names. Statistics go to
    ``result.uns['prepare']`` (a dict; callers replace it before writing).
    """
    import h5py

    p = check_exists(path, "--reference")
    what = f"--reference {path}"
    try:
        f = h5py.File(p, "r", rdcc_nbytes=64 << 20)
    except Exception as err:  # h5py raises OSError and others for non-HDF5/truncated files
        raise _cannot_read(what, err) from None
    with f:
        try:
            src: H5Reference | MemoryReference = H5Reference(f)
        except Unsupported as why:
            log(f"reference: layout not readable in part ({why}); reading the whole file "
                "(re-save it with a current anndata to read only the subsample)")
            try:
                src = MemoryReference(ad.read_h5ad(p))
            except Exception as err:  # anndata raises many types for corrupt or non-h5ad files
                raise _cannot_read(what, err) from None
        except Exception as err:
            raise _cannot_read(what, err) from None
        return _select_reference(src, what, path, celltype_key, max_single_cells, seed, min_cells)


def label_codes(labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Cell-type labels as ``(codes, names)``: ``names[codes[i]]`` is cell i's label as a stripped
    string, code -1 where it has none (missing, empty, 'nan', 'none', 'na', any case).

    A categorical column (how atlases store labels) is cleaned through its categories, so its
    labels are never expanded to one Python string per cell; two categories equal once stripped
    share one name.
    """
    cat = labels if isinstance(labels.dtype, pd.CategoricalDtype) else labels.astype("category")
    cats = pd.Series(cat.cat.categories).astype("string").str.strip()
    bad = (cats.isna() | (cats == "") | cats.str.lower().isin(["nan", "none", "na"])).to_numpy(dtype=bool)
    of_cat = np.full(len(cats), -1, dtype=np.int64)
    good, names = pd.factorize(cats[~bad].to_numpy(dtype=object))
    of_cat[~bad] = good
    raw = cat.cat.codes.to_numpy()
    codes = np.where(raw >= 0, of_cat[np.maximum(raw, 0)], -1)
    return codes, np.asarray(names, dtype=object)


def _select_reference(src: H5Reference | MemoryReference, what: str, path: Any, celltype_key: str,
                      max_single_cells: int | None = None, seed: int = 0, min_cells: int = 2
                      ) -> ad.AnnData:
    """Labels -> validated, seeded subsample -> its raw counts (see :func:`read_reference`)."""
    if src.n_obs == 0 or src.n_vars == 0:
        raise InputError(f"{what}: empty ({src.n_obs} cells x {src.n_vars} genes); provide a populated reference")
    if celltype_key not in src.columns:
        raise InputError(f"--celltype_key '{celltype_key}' is not a column of {path} obs (found: "
                         f"{examples(src.columns, 12) or 'no columns'}); "
                         "set --celltype_key to the cell-type column")
    stats: dict[str, Any] = {"n_cells_input": int(src.n_obs), "n_genes_input": int(src.n_vars)}

    codes, names = label_codes(src.labels(celltype_key))
    unlabelled = codes < 0
    if unlabelled.all():
        raise InputError(f"--celltype_key '{celltype_key}': every cell of {path} has an empty label; "
                         "choose the column that holds cell types")
    if unlabelled.any():
        warn(f"{what}: {int(unlabelled.sum())} cells without a label in obs['{celltype_key}'] are dropped")
    stats["n_cells_unlabelled_dropped"] = int(unlabelled.sum())
    keep = np.flatnonzero(~unlabelled)
    kept_codes = codes[keep]

    counts = np.bincount(kept_codes, minlength=len(names))
    sizes = pd.Series(counts, index=pd.Index(names, dtype=object))
    sizes = sizes[sizes > 0].sort_values(ascending=False, kind="stable")
    small = sizes[sizes < min_cells]
    if len(small):
        listed = examples([f"{k!r} ({v})" for k, v in small.items()])
        raise InputError(f"{what}: cell type(s) with fewer than {min_cells} cells in obs['{celltype_key}']: {listed}; "
                         "remove those cells or merge them into another type")
    if len(sizes) == 1:
        raise InputError(f"{what}: obs['{celltype_key}'] has a single cell type ({sizes.index[0]!r}), so every "
                         "fraction would be 1.0; choose the column that holds cell types (--celltype_key) or a "
                         "reference with at least two types")
    stats["celltype_counts_input"] = {str(k): int(v) for k, v in sizes.sort_index().items()}

    sub = keep
    if max_single_cells is not None and keep.size > max_single_cells:
        # codes group cells exactly as their label strings do: the same cells are chosen
        sub = keep[subsample_indices(kept_codes, max_single_cells, seed, min_cells)]
        log(f"reference: randomly selected {sub.size} of {keep.size} cells (seed {seed})")
    final_labels = names[codes[sub]].astype(str)

    # Raw counts: layers['counts'], then .raw, then X (the first holding non-negative integers).
    problems = []
    for source, read_rows, var_names in src.candidates():
        if read_rows is None:
            problems.append(f"{source} is empty")
            continue
        x = read_rows(sub)
        x = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else sp.csr_matrix(x).astype(np.float32)
        problem = _count_problem(x)
        if problem is None:
            break
        problems.append(f"{source} has {problem}")
    else:
        raise InputError(f"{what}: no raw counts found ({'; '.join(problems)}); the reference needs raw integer "
                         "counts in X, layers['counts'] or .raw")
    x.sum_duplicates()
    x.eliminate_zeros()
    if problems:
        log(f"reference: using raw counts from {source} ({'; '.join(problems)})")
    stats["counts_source"] = source

    obs_names = src.obs_names_at(sub)
    out = ad.AnnData(
        X=x,
        obs=pd.DataFrame({CELLTYPE: pd.Categorical(final_labels, categories=sorted(set(final_labels)))},
                         index=obs_names),
        var=pd.DataFrame(index=pd.Index(np.asarray(var_names, dtype=str))),
    )
    n_dup_genes = int(out.var_names.duplicated().sum())
    if n_dup_genes:
        out.var_names_make_unique()
        warn(f"{what}: {n_dup_genes} duplicate gene names made unique (suffix -1, -2, ...)")
    n_dup_cells = int(out.obs_names.duplicated().sum())
    if n_dup_cells:
        out.obs_names_make_unique()
        warn(f"{what}: {n_dup_cells} duplicate cell names made unique (suffix -1, -2, ...)")
    totals = np.asarray(x.sum(axis=1)).ravel()
    zero_cells = totals == 0
    if zero_cells.all():
        raise InputError(f"{what}: every selected cell has zero counts in {source}; provide a reference with counts")
    nz = totals[~zero_cells]
    if nz.size >= 10 and np.abs(nz - np.median(nz)).max() <= NORMALISED_CELL_TOL * np.median(nz):
        raise InputError(f"{what}: every cell of {source} sums to about {np.median(nz):.0f}: normalised values "
                         "(e.g. normalize_total) rounded to integers, not raw counts; provide raw UMI/read counts "
                         "in X, layers['counts'] or .raw")
    if zero_cells.any():
        n_zero = int(zero_cells.sum())
        out = out[~zero_cells].copy()
        by_type = out.obs[CELLTYPE].value_counts()
        gone = by_type[by_type < min_cells]
        if len(gone):
            raise InputError(f"{what}: after dropping {n_zero} cells with zero counts, cell type(s) "
                             f"{examples([f'{k!r} ({v})' for k, v in gone.items()])} have fewer than {min_cells} "
                             "cells; remove those cells or merge the type into another")
        out.obs[CELLTYPE] = out.obs[CELLTYPE].cat.remove_unused_categories()
        warn(f"{what}: {n_zero} of {zero_cells.size} selected cells have zero counts in {source} and were dropped")
    stats.update({
        "n_cells": int(out.n_obs), "n_genes": int(out.n_vars), "duplicate_genes_renamed": n_dup_genes,
        "duplicate_cells_renamed": n_dup_cells, "n_cells_zero_counts": int(zero_cells.sum()),
        "celltype_counts": {str(k): int(v) for k, v in out.obs[CELLTYPE].value_counts().sort_index().items()},
    })
    out.uns["prepare"] = stats
    return out
