"""A shared 2-D embedding of reference and generated cells (pymde) for the QC plots."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s.errors import InputError


def subsample(adata: ad.AnnData, max_cells: int | None, seed: int) -> ad.AnnData:
    """At most ``max_cells`` cells drawn without replacement (seeded); original order kept."""
    if max_cells is None or adata.n_obs <= max_cells:
        return adata
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(adata.n_obs, size=int(max_cells), replace=False))
    return adata[idx]


def embed(adata_ref: ad.AnnData, adata_gen: ad.AnnData, seed: int = 42, n_comps: int = 30,
          n_top_genes: int = 2000) -> np.ndarray:
    """2-D MDE of reference and generated cells together (rows: reference cells, then generated).

    Joint PCA on the log-normalised values of the shared genes (the ``n_top_genes`` most variable
    across both sets, sparse and implicitly centred), then ``pymde.preserve_neighbors`` with the
    settings of the seed's ``ov.utils.mde`` (2 dims, Standardized constraint, repulsive fraction
    0.7, 15 neighbours), seeded with ``pymde.seed(seed)``, initialised from the first two PCs and
    run on one CPU thread, so the same seed gives the same coordinates.
    """
    import pymde
    import scanpy as sc

    genes = pd.Index(adata_ref.var_names).intersection(pd.Index(adata_gen.var_names), sort=False)
    if len(genes) == 0:
        raise InputError("reference and generated cells share no genes; pass the model_input.h5ad "
                         "the VAE was trained on")
    xr = adata_ref[:, genes].X
    xg = adata_gen[:, genes].X
    x = sp.vstack([sp.csr_matrix(xr), sp.csr_matrix(xg)], format="csr", dtype=np.float32)
    n = x.shape[0]
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean**2
    top = np.sort(np.argsort(-var, kind="stable")[: min(n_top_genes, x.shape[1])])
    x = x[:, top]
    k = min(n_comps, n - 1, x.shape[1] - 1)
    if k < 2:
        dense = x.toarray()
        return np.pad(dense, ((0, 0), (0, max(0, 2 - dense.shape[1]))))[:, :2].astype(np.float32)
    pcs = np.asarray(sc.pp.pca(x, n_comps=k, svd_solver="arpack", random_state=seed),
                     dtype=np.float32)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible, and far faster than oversubscribed threads
    try:
        pymde.seed(seed)
        mde = pymde.preserve_neighbors(pcs, embedding_dim=2, constraint=pymde.Standardized(),
                                       repulsive_fraction=0.7, n_neighbors=min(15, n - 1),
                                       init="random", device="cpu", verbose=False)
        # Start from the first two PCs instead of pymde's spectral init: that one calls ARPACK
        # with an unseeded start vector (not reproducible) and converges slowly.
        init = pymde.util.proj_standardized(torch.from_numpy(pcs[:, :2].copy()), demean=True)
        emb = mde.embed(X=init, verbose=False)
    finally:
        torch.set_num_threads(threads)
    return emb.detach().cpu().numpy().astype(np.float32)
