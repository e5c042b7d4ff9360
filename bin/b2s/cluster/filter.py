"""FILTER stage: drop generated cells that fall into small Leiden clusters.

Behaviour follows the seed tool (omicverse ``Bulk2Single.filtered``): highly variable genes
(seurat flavour: min_mean 0.0125, max_mean 3, min_disp 0.5) on the log-normalised generated
cells, scale (max_value 10), PCA (100 components), kNN graph (scanpy's umap connectivities,
computed by :mod:`b2s.cluster.graph` without numba), Leiden, and clusters with fewer than
``leiden_size`` cells are removed.

Differences on purpose:
- the kept cells are returned with ALL genes and the log-normalised X (the seed returns the
  scaled HVG matrix, which later QC then compares against log data);
- every random step is seeded; the input object is never modified;
- degenerate inputs (few cells, few HVGs, every cluster too small) fall back to a documented
  behaviour with a log line instead of crashing or returning zero cells.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE, UNS_KEY
from b2s.errors import InputError, warn

HVG_PARAMS = {"min_mean": 0.0125, "max_mean": 3.0, "min_disp": 0.5}
MIN_HVG = 20  # below this, PCA on HVGs is meaningless: use all genes instead
N_NEIGHBORS = 15  # scanpy default, as used by the seed


def _log(msg: str) -> None:
    print(f"[filter] {msg}", flush=True)


def _warn(msg: str) -> None:
    """A fallback the user should know of: a WARNING line (:func:`b2s.errors.warn`), which the
    pipeline lists at the end of the run and atop the report."""
    warn(f"[filter] {msg}")


def _dense32(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def _select_hvg(work: ad.AnnData, notes: list[str]) -> np.ndarray:
    """Boolean mask of highly variable genes, or all genes when too few qualify."""
    import scanpy as sc

    mask = np.zeros(work.n_vars, dtype=bool)
    if work.n_obs >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hv = sc.pp.highly_variable_genes(work, inplace=False, flavor="seurat",
                                                 **HVG_PARAMS)
            mask = np.asarray(hv["highly_variable"], dtype=bool)
        except (ValueError, IndexError) as err:  # e.g. constant data: no dispersion bins
            notes.append(f"highly_variable_genes failed ({err}); all genes used")
    n_hvg = int(mask.sum())
    if n_hvg < MIN_HVG:
        if not notes:
            notes.append(f"only {n_hvg} highly variable genes (< {MIN_HVG}); all "
                         f"{work.n_vars} genes used for PCA")
        _warn(notes[-1])
        return np.ones(work.n_vars, dtype=bool)
    return mask


def _pca(x: np.ndarray, n_comps: int, seed: int, notes: list[str]) -> np.ndarray:
    """PCA of the scaled matrix; capped at min(n_obs, n_vars) - 1 components."""
    import scanpy as sc

    cap = min(x.shape) - 1
    k = min(n_comps, cap)
    if k < 1:
        notes.append(f"too few cells/genes for PCA ({x.shape[0]} x {x.shape[1]}); "
                     "X_pca set to zeros")
        _warn(notes[-1])
        return np.zeros((x.shape[0], 1), dtype=np.float32)
    if k < n_comps:
        _log(f"PCA components capped at {k} (requested {n_comps}; data {x.shape[0]} x {x.shape[1]})")
    # exact LAPACK SVD for moderate HVG counts (fast, no random start); ARPACK for wide data
    solver = "full" if min(x.shape) <= 1000 else "arpack"
    pcs = sc.pp.pca(x, n_comps=k, svd_solver=solver, random_state=seed)
    return np.asarray(pcs, dtype=np.float32)


def _leiden(pcs: np.ndarray, seed: int) -> np.ndarray:
    """Leiden clusters (leidenalg, the seed's backend) on the fuzzy kNN graph of ``pcs``.

    The graph is ``sc.pp.neighbors``' (umap method, exact kNN) computed by :mod:`b2s.cluster.graph`
    instead of umap's numba kernels, which cost ~9 s of compilation in every FILTER task;
    the Leiden call is unchanged.
    """
    import scanpy as sc

    from b2s.cluster.graph import connectivities

    conn = connectivities(pcs, n_neighbors=min(N_NEIGHBORS, pcs.shape[0] - 1))
    g = ad.AnnData(X=np.zeros((pcs.shape[0], 1), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarning about the default leiden backend
        sc.tl.leiden(g, adjacency=conn, flavor="leidenalg", random_state=seed,
                     key_added="leiden")
    return g.obs["leiden"].astype(str).to_numpy()


def filter_cells(adata: ad.AnnData, leiden_size: int = 25, seed: int = 42, *,
                 n_comps: int = 100, max_value: float = 10.0) -> ad.AnnData:
    """Keep generated cells that belong to Leiden clusters of at least ``leiden_size`` cells.

    Parameters
    ----------
    adata
        Generated cells: X log-normalised (sparse or dense), ``obs['celltype']`` optional.
        Not modified.
    leiden_size
        Minimum cluster size; smaller clusters are dropped.
    seed
        Seeds PCA, the kNN graph and Leiden.

    Returns
    -------
    anndata.AnnData
        Kept cells with all genes and the input's log-normalised X, ``obsm['X_pca']`` (PCA of the
        scaled HVG matrix), ``obs['leiden']``, ``var['highly_variable']`` and ``uns['b2s']``
        (JSON string: params and the filtering summary).

    Fallbacks (logged, recorded in the summary's ``notes``): fewer cells than ``leiden_size``
    -> clustering skipped, all cells kept; fewer than 20 HVGs -> all genes used; every cluster
    smaller than ``leiden_size`` -> all cells kept (the seed would return zero cells).
    """
    if int(leiden_size) < 1:
        raise InputError(f"--leiden_size {leiden_size}: must be >= 1; use a positive cluster size")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"generated h5ad has {adata.n_obs} cells x {adata.n_vars} genes: nothing "
                         "to filter; check the GENERATE step and cell_targets.csv for this group")
    leiden_size = int(leiden_size)
    n_in = adata.n_obs
    notes: list[str] = []
    _log(f"cells in: {n_in}, genes: {adata.n_vars}, leiden_size: {leiden_size}, seed: {seed}")

    # Light working object sharing X read-only (HVG detection does not write X).
    work = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names.copy()),
                      var=pd.DataFrame(index=adata.var_names.copy()))
    hvg = _select_hvg(work, notes)
    n_hvg = int(hvg.sum())
    _log(f"genes used for PCA: {n_hvg}")

    # Scale HVG columns (unit variance, clipped at +-max_value) exactly as scanpy does.
    import scanpy as sc

    x = _dense32(adata.X[:, np.flatnonzero(hvg)])
    if x.shape[0] >= 2:  # one cell has no variance to scale by
        x = sc.pp.scale(x, max_value=max_value, copy=True)
    else:
        x = np.zeros_like(x)
    pcs = _pca(x, n_comps, seed, notes)
    del x

    if n_in < leiden_size or n_in < 3:
        notes.append(f"only {n_in} cells (< leiden_size {leiden_size} or < 3): clustering "
                     "skipped, all cells kept")
        _log(notes[-1])
        if n_in < leiden_size:  # the parameter changes nothing: say so where warnings are collected
            warn(f"--leiden_size {leiden_size} is larger than the {n_in} generated cells: nothing is filtered; "
                 "lower --leiden_size (default 25)")
        clusters = np.zeros(n_in, dtype=object).astype(str)
        clusters[:] = "0"
    else:
        clusters = _leiden(pcs, seed)
    sizes = pd.Series(clusters).value_counts()
    sizes = sizes.reindex(sorted(sizes.index, key=int))
    small = [c for c in sizes.index if sizes[c] < leiden_size]
    keep = ~np.isin(clusters, small)
    if not keep.any():
        notes.append(f"all {len(sizes)} clusters are smaller than leiden_size {leiden_size}; "
                     "all cells kept (lower --leiden_size or generate more cells)")
        _log(notes[-1])
        if n_in >= leiden_size:  # (fewer cells than leiden_size was warned about above)
            warn(f"--leiden_size {leiden_size}: all {len(sizes)} Leiden clusters (largest {int(sizes.max())} cells) "
                 "are smaller, so nothing is filtered; lower --leiden_size (default 25)")
        keep[:] = True
        dropped: list[str] = []
    else:
        dropped = small
    _log(f"leiden clusters: {len(sizes)}; dropped (< {leiden_size} cells): "
         f"{', '.join(f'{c}({sizes[c]})' for c in dropped) if dropped else 'none'}")

    out = adata[keep].copy()  # copy: the input object stays untouched
    out.obs["leiden"] = pd.Categorical(
        clusters[keep], categories=[c for c in sizes.index if c not in dropped])
    out.obsm["X_pca"] = pcs[keep]
    out.var["highly_variable"] = hvg
    n_out = int(keep.sum())
    _log(f"cells out: {n_out} ({n_out / n_in:.1%} kept), removed: {n_in - n_out}")

    summary: dict[str, Any] = {
        "n_cells_in": int(n_in),
        "n_cells_out": n_out,
        "n_cells_removed": int(n_in - n_out),
        "fraction_kept": round(n_out / n_in, 6),
        "n_genes": int(adata.n_vars),
        "n_hvg": n_hvg,
        "n_pcs": int(pcs.shape[1]),
        "n_clusters": int(len(sizes)),
        "cluster_sizes": {str(k): int(v) for k, v in sizes.items()},
        "dropped_clusters": [str(c) for c in dropped],
        "notes": notes,
    }
    if CELLTYPE in adata.obs:
        ct_in = adata.obs[CELLTYPE].astype(str).value_counts()
        ct_out = out.obs[CELLTYPE].astype(str).value_counts()
        summary["celltype_counts"] = {
            str(t): {"in": int(ct_in[t]), "out": int(ct_out.get(t, 0))} for t in ct_in.index}
    params = {"leiden_size": leiden_size, "seed": int(seed), "n_comps": int(n_comps),
              "max_value": float(max_value), "n_neighbors": N_NEIGHBORS,
              "hvg": dict(HVG_PARAMS, flavor="seurat", min_hvg=MIN_HVG),
              "leiden": {"flavor": "leidenalg", "resolution": 1.0}}
    upstream = adata.uns.get(UNS_KEY)
    record: dict[str, Any] = {"stage": "filter", "params": params, "summary": summary}
    if upstream is not None:
        record["input"] = parse_uns_record(upstream)
    out.uns[UNS_KEY] = json.dumps(record)
    return out


def parse_uns_record(value: Any) -> Any:
    """An ``uns['b2s']`` value as a JSON-able object (parsed if it is a JSON string)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def filter_summary(adata_in: ad.AnnData, filtered: ad.AnnData) -> dict[str, Any]:
    """Summary of one FILTER run, for either engine.

    Counts (cells in/out, per cell type, kept Leiden clusters) are computed from the two objects;
    the details only :func:`filter_cells` knows (dropped clusters, HVGs, fallback notes) are taken
    from ``filtered.uns['b2s']`` when present.
    """
    rec = filtered.uns.get(UNS_KEY)
    rec = parse_uns_record(rec) if rec is not None else {}
    details = dict(rec.get("summary", {})) if isinstance(rec, dict) else {}
    n_in, n_out = int(adata_in.n_obs), int(filtered.n_obs)
    out: dict[str, Any] = {
        "n_cells_in": n_in,
        "n_cells_out": n_out,
        "n_cells_removed": n_in - n_out,
        "fraction_kept": round(n_out / n_in, 6) if n_in else None,
    }
    if "leiden" in filtered.obs:
        kept = filtered.obs["leiden"].astype(str).value_counts()
        out["kept_cluster_sizes"] = {str(k): int(v) for k, v in kept.items()}
    if CELLTYPE in adata_in.obs:
        ct_in = adata_in.obs[CELLTYPE].astype(str).value_counts()
        ct_out = (filtered.obs[CELLTYPE].astype(str).value_counts()
                  if CELLTYPE in filtered.obs else pd.Series(dtype=int))
        out["celltype_counts"] = {
            str(t): {"in": int(ct_in[t]), "out": int(ct_out.get(t, 0))} for t in ct_in.index}
    for k, v in details.items():
        out.setdefault(k, v)
    if isinstance(rec, dict) and rec.get("stage") == "filter" and "params" in rec:
        out.setdefault("method", rec["params"])  # native filter settings (HVG, PCA, Leiden)
    return out
