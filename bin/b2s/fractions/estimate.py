"""Cell-type fractions of bulk samples, group means and target cell numbers (ESTIMATE_FRACTIONS).

Four estimators share one signature, :func:`estimate_sample_fractions`:

``wls`` (default)
    Variance-weighted robust NNLS (:mod:`b2s.fractions.wls`): markers from a between-type test on
    the full gene space (Welch t on per-cell log CP10k for every ORDERED pair of types, so the few
    genes that tell CD4 from CD8 T cells are kept; :mod:`b2s.fractions.markers`), per-type MEAN
    raw counts per cell as the signature (coefficients = cell numbers, so per-type mRNA content
    is corrected: fractions of cells, not reads), genes weighted by the residual variance the
    fit implies (reference-mean error from the type's cell count, which cells the bulk sampled,
    counting noise from the library size (TPM/FPKM have none: its scale is fitted per sample
    from the residuals, so TPM and counts of the same samples give nearly the same fractions;
    benchmarks/README.md "Bulk units"), a fitted expression-proportional term; per-type variances
    shrunk towards a negative-binomial trend), re-weighted twice with Huber weights on the
    standardised residuals (genes whose bulk expression departs from the reference lose
    influence), each solve an exact Lawson-Hanson NNLS for all samples at once, its normal
    equations corrected for the noise of signatures estimated from few reference cells
    (errors-in-variables: without it a type with 5 reference cells is under-estimated and a
    similar type absorbs its cells). Deterministic.
    ``markers`` (``--markers``) replaces the automatic selection. Options: ``n_per_pair`` (30),
    ``min_fold`` (3), ``n_irls`` (2), ``huber`` (1.0), ``sampling``, ``multiplicative``,
    ``shrink`` (10), ``eiv`` (0.5).
``nnls``
    The simple baseline (the null of the fraction benchmarks). Non-negative least squares of
    each bulk sample (CPM on the genes shared with the reference) on per-type MEAN profiles
    (counts per cell), restricted to marker genes (top ``n_markers`` per type by fold change of
    the type's CPM mean over the highest other type), every gene weighted by 1/sqrt(its mean over
    the type profiles) (Poisson-like variance, so highly expressed genes do not dominate and noisy
    low ones are not amplified; ``gene_scale``). Because the profiles are counts *per cell*, the
    coefficients are proportional to cell numbers, i.e. CELL fractions (``cell_share=False``
    returns expression shares instead). All samples are solved at once by an accelerated
    projected-gradient solver (no per-sample loop).
``tape`` / ``scaden``
    Small torch MLPs trained on pseudo-bulks simulated from SINGLE reference cells (cell-level
    sampling as TAPE and Scaden were published; omicverse instead mixes one summed profile per
    type): Dirichlet fractions, half of the mixtures with a random half of the types set to zero,
    ``n_cells`` cells drawn per mixture by those fractions, counts summed with one sparse
    (mixtures x cells) @ (cells x genes) product; marker genes only. Input = CPM -> log2(x+1) ->
    per-gene z-score with the pseudo-bulks' mean/sd (``scaling='minmax'``: Scaden's per-sample
    min-max), applied identically to the real bulk. ``tape``: one CELU/dropout encoder with TAPE's
    non-negative linear signature decoder (loss = L1 on fractions + L1 reconstruction of the
    min-max scaled input). ``scaden``: Scaden's ensemble of three ReLU MLPs (256/512/1024 wide,
    its dropout rates) averaged. Softmax outputs, Adam, seeded init/dropout/shuffling, 1 thread.

Why ``wls`` is the default: on real full-transcriptome pseudo-bulks (Hao PBMC, 3 seeded
reference / held-out splits, ``benchmarks/fractions_real.py``) it has the highest r and the lowest
RMSE and per-type bias of the four estimators, Rectangle and omicverse's ``scaden`` / ``tape``,
in about a second, and it beats ``nnls`` (the null: NNLS on the type means, without the variance
model or the pairwise markers) on the bundled data too (benchmarks/README.md, "Cell fractions on
real full-transcriptome data"; the earlier choice of ``nnls`` and its design measurements are in
"Design measurements of the fraction estimators" there).
"""

from __future__ import annotations

import time

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from b2s.errors import InputError
from b2s.utils import indicator

METHODS: tuple[str, ...] = ("wls", "nnls", "tape", "scaden")
DEFAULT_METHOD: str = "wls"

CELLTYPE_KEY = "celltype"


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _csr(x) -> sparse.csr_matrix:
    """The matrix as CSR float64 without densifying (a view-free copy only when needed)."""
    if sparse.issparse(x):
        return sparse.csr_matrix(x, dtype=np.float64)
    return sparse.csr_matrix(np.asarray(x, dtype=np.float64))


def _labels(reference: anndata.AnnData) -> pd.Categorical:
    """Cell-type labels with unused categories dropped and categories sorted by name."""
    if CELLTYPE_KEY not in reference.obs.columns:
        raise InputError(
            f"reference.h5ad: obs has no '{CELLTYPE_KEY}' column (found: "
            f"{', '.join(map(str, reference.obs.columns)) or 'none'}); run PREPARE_INPUTS to create it"
        )
    lab = reference.obs[CELLTYPE_KEY].astype(str).values
    return pd.Categorical(lab, categories=sorted(set(lab)))


def shared_genes(bulk: pd.DataFrame, reference: anndata.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the shared genes in reference var and in bulk rows (reference order)."""
    ref_genes = pd.Index(reference.var_names.astype(str))
    bulk_pos = pd.Index(bulk.index.astype(str)).get_indexer(ref_genes)
    keep = np.flatnonzero(bulk_pos >= 0)
    if keep.size == 0:
        raise InputError(
            "bulk_counts.tsv / reference.h5ad: no gene symbol is shared between the bulk matrix "
            f"(e.g. {', '.join(map(str, bulk.index[:3]))}) and the reference (e.g. "
            f"{', '.join(map(str, ref_genes[:3]))}); map the bulk IDs to symbols with --gene_map"
        )
    return keep, bulk_pos[keep]


def type_profiles(reference: anndata.AnnData, gene_pos: np.ndarray | None = None) -> dict:
    """Per-type count sums, cell numbers and mean profiles via one sparse indicator product.

    Returns a dict with ``types`` (sorted names), ``sums`` (types x genes, dense), ``n_cells``,
    ``mean`` (counts per cell), ``library`` (mean counts per cell over the selected genes).
    """
    lab = _labels(reference)
    x = reference.X if gene_pos is None else reference.X[:, gene_pos]
    ind = indicator(lab.codes, len(lab.categories))
    sums = np.asarray((ind @ _csr(x)).todense())
    n_cells = np.asarray(ind.sum(axis=1)).ravel()
    mean = sums / n_cells[:, None]
    return {"types": list(lab.categories), "sums": sums, "n_cells": n_cells, "mean": mean,
            "library": mean.sum(axis=1)}


def _markers(mean: np.ndarray, n_markers: int) -> np.ndarray:
    """Union of the top ``n_markers`` genes per type by log2 fold change of its CPM mean over
    the highest other type (only genes with fold change > 0, i.e. highest in that type)."""
    lib = mean.sum(axis=1, keepdims=True)
    cpm = mean / np.where(lib > 0, lib, 1) * 1e6
    k = cpm.shape[0]
    if k == 1:
        return np.argsort(-cpm[0])[:n_markers]
    top2 = -np.sort(-cpm, axis=0)[:2]  # largest and second largest per gene
    picked = []
    for t in range(k):  # loop over cell types (few), vectorised over genes
        other = np.where(cpm[t] >= top2[0], top2[1], top2[0])
        fc = np.log2((cpm[t] + 1.0) / (other + 1.0))
        order = np.argsort(-fc, kind="stable")[:n_markers]
        picked.append(order[fc[order] > 0])
    genes = np.unique(np.concatenate(picked))
    if genes.size < k:  # degenerate reference: fall back to the most expressed genes
        genes = np.argsort(-cpm.sum(axis=0))[: max(n_markers, k)]
    return np.sort(genes)


def _batched_nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 20000, tol: float = 1e-10) -> np.ndarray:
    """Solve min ||a c - b_j||, c >= 0 for every column b_j at once (FISTA with restart).

    ``a`` genes x k, ``b`` genes x samples; returns k x samples. Columns of ``a`` are rescaled to
    unit norm first (NNLS is invariant to positive column scaling), which conditions the Gram
    matrix for the few-column problems met here.
    """
    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    an = a / norm
    g = an.T @ an
    atb = an.T @ b
    step = 1.0 / np.linalg.eigvalsh(g)[-1]
    c = np.clip(np.linalg.lstsq(an, b, rcond=None)[0], 0, None)
    y, t = c.copy(), 1.0
    for _ in range(max_iter):
        c_new = np.clip(y - step * (g @ y - atb), 0, None)
        # adaptive restart keeps the momentum from overshooting on ill-conditioned problems
        if np.sum((c_new - c) * (y - c_new)) > 0:
            t = 1.0
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = c_new + ((t - 1.0) / t_new) * (c_new - c)
        delta = np.max(np.abs(c_new - c))
        c, t = c_new, t_new
        if delta <= tol * max(1.0, float(np.max(np.abs(c)))):
            break
    return c / norm[:, None]


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1; an all-zero row becomes uniform (no information)."""
    x = np.clip(x, 0, None)
    s = x.sum(axis=1, keepdims=True)
    out = np.where(s > 0, x / np.where(s > 0, s, 1), 1.0 / x.shape[1])
    return out


def bulk_matrix(bulk: pd.DataFrame, bulk_pos: np.ndarray) -> np.ndarray:
    """Samples x shared genes, float64."""
    return np.asarray(bulk.to_numpy(dtype=np.float64)[bulk_pos].T)


# --------------------------------------------------------------------------------------------
# nnls
# --------------------------------------------------------------------------------------------
def _nnls(bulk: pd.DataFrame, reference: anndata.AnnData, seed: int = 42, n_markers: int = 50,
          gene_scale: str = "sqrt", cell_share: bool = True,
          markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Marker-gene NNLS on per-type mean profiles; see the module docstring. ``seed`` unused
    (the method is deterministic) but accepted for a uniform signature."""
    ref_pos, bulk_pos = shared_genes(bulk, reference)
    prof = type_profiles(reference, ref_pos)
    genes = _chosen_markers(prof["mean"], n_markers, markers, reference, ref_pos)
    b = bulk_matrix(bulk, bulk_pos)
    lib = b.sum(axis=1, keepdims=True)
    b = b / np.where(lib > 0, lib, 1) * 1e6  # CPM over the shared genes
    sig = prof["mean"][:, genes].T  # genes x types, counts per cell
    # one global factor puts the signature on the CPM scale; per-type factors would change the
    # meaning of the coefficients (cells -> expression), which cell_share handles explicitly
    sig = sig / max(prof["library"].mean(), 1e-12) * 1e6
    rhs = b[:, genes].T
    if gene_scale not in ("none", "sqrt", "mean"):
        raise InputError(f"fraction option gene_scale='{gene_scale}' is unknown; use none, sqrt or mean")
    if gene_scale != "none":
        # weight genes by 1/mean (equal say per gene) or 1/sqrt(mean) (Poisson-like variance)
        w = sig.mean(axis=1)
        w = np.where(w > 0, w, 1.0)
        w = 1.0 / (np.sqrt(w) if gene_scale == "sqrt" else w)
        sig, rhs = sig * w[:, None], rhs * w[:, None]
    coef = _batched_nnls(sig, rhs).T  # samples x types, proportional to cell numbers
    if not cell_share:
        coef = coef * prof["library"][None, :]
    out = pd.DataFrame(_normalise_rows(coef), index=bulk.columns, columns=prof["types"])
    out.attrs["marker_genes"] = list(reference.var_names.astype(str)[ref_pos][genes])
    return out


# --------------------------------------------------------------------------------------------
# wls (pairwise-test markers, count-space profiles, variance-weighted NNLS)
# --------------------------------------------------------------------------------------------
def _marker_positions(markers: dict[str, list[str]], ref_genes: pd.Index) -> np.ndarray:
    """Positions (in ``ref_genes``) of the union of a curated marker list."""
    wanted = pd.Index(sorted({g for gs in markers.values() for g in gs}))
    pos = ref_genes.get_indexer(wanted)
    return np.sort(pos[pos >= 0])


def _chosen_markers(mean: np.ndarray, n_markers: int, markers: dict[str, list[str]] | None,
                    reference: anndata.AnnData, ref_pos: np.ndarray) -> np.ndarray:
    """Curated markers (``--markers``) when given, else the fold-change markers."""
    if markers is None:
        return _markers(mean, n_markers)
    return _marker_positions(markers, pd.Index(reference.var_names.astype(str)[ref_pos]))


def _wls(bulk: pd.DataFrame, reference: anndata.AnnData, seed: int = 42, n_per_pair: int = 30,
         min_fold: float = 3.0, n_irls: int = 2, sampling: bool = True, huber: float | None = 1.0,
         multiplicative: str | float = "fit", shrink: float = 10.0, eiv: float = 0.5,
         markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Variance-weighted NNLS on pairwise-test markers (:mod:`b2s.fractions.wls`). ``seed``
    unused (deterministic) but accepted for a uniform signature."""
    from b2s.fractions.markers import pairwise_markers
    from b2s.fractions.wls import wls_fit

    ref_pos, bulk_pos = shared_genes(bulk, reference)
    lab = _labels(reference)
    k = len(lab.categories)
    x = _csr(reference.X[:, ref_pos])
    if markers is None:
        genes = pairwise_markers(x, lab.codes, k, n_per_pair=n_per_pair, min_fold=min_fold)
    else:
        genes = _marker_positions(markers, pd.Index(reference.var_names.astype(str)[ref_pos]))
    ind = indicator(lab.codes, k)
    n_ref = np.asarray(ind.sum(axis=1)).ravel()
    xg = x[:, genes]
    mean = np.asarray((ind @ xg).todense()) / n_ref[:, None]  # types x markers, counts per cell
    sq = xg.copy()
    sq.data **= 2
    var = np.maximum(np.asarray((ind @ sq).todense()) / n_ref[:, None] - mean ** 2, 0.0)
    var *= (n_ref / np.maximum(n_ref - 1, 1))[:, None]
    if shrink > 0:
        # few reference cells give noisy variances: shrink each towards a negative-binomial
        # trend mu + phi mu^2 (one phi, moment estimate over well-expressed entries), with the
        # weight of ``shrink`` pseudo-cells
        ok = mean > 0.1
        phi = float(np.median(((var - mean) / np.maximum(mean, 1e-12) ** 2)[ok])) if ok.any() else 0.0
        trend = mean + max(phi, 0.0) * mean ** 2
        var = (n_ref[:, None] * var + shrink * trend) / (n_ref[:, None] + shrink)
    # one global factor q puts the signature on the CPM scale (per-type factors would turn the
    # coefficients from cells into reads)
    lib = np.asarray((ind @ x).sum(axis=1)).ravel() / n_ref  # mean counts per cell, shared genes
    q = 1e6 / max(float(lib.mean()), 1e-12)
    b_raw = bulk_matrix(bulk, bulk_pos)
    total = b_raw.sum(axis=1)
    p = 1e6 / np.where(total > 0, total, 1.0)
    b = b_raw[:, genes] * p[:, None]
    # counts: p (CPM per read) sets the counting noise; TPM/FPKM sum to no library size, so p is
    # fitted per sample from the residuals instead (fraction_wls.fit_bulk_scale)
    has_library = bulk.attrs.get("units", "counts") == "counts"
    info: dict = {}
    coef = wls_fit(mean.T * q, var.T * q * q, n_ref, b, p if has_library else None, q, n_irls=n_irls,
                   sampling=sampling, huber=huber, multiplicative=multiplicative, eiv=eiv, info=info)
    out = pd.DataFrame(_normalise_rows(coef), index=bulk.columns, columns=list(lab.categories))
    out.attrs["marker_genes"] = list(reference.var_names.astype(str)[ref_pos][genes])
    if "bulk_scale" in info:
        out.attrs["noise_library"] = dict(zip(map(str, bulk.columns), map(float, 1e6 / info["bulk_scale"])))
    return out


# --------------------------------------------------------------------------------------------
# pseudo-bulk simulation from single cells + MLP estimators (tape, scaden)
# --------------------------------------------------------------------------------------------
def simulate_pseudobulk(reference: anndata.AnnData, n_samples: int, n_cells: int,
                        rng: np.random.Generator, gene_pos: np.ndarray | None = None,
                        sparse_prob: float = 0.5) -> tuple[sparse.csr_matrix, np.ndarray, list[str]]:
    """Pseudo-bulks summed from single reference cells with known cell fractions.

    Fractions ~ Dirichlet(1); in the first ``sparse_prob`` share of mixtures a random
    ``sparse_prob`` share of the types is set to zero (mixtures without some types, as in
    TAPE). Cell numbers ~ Multinomial(n_cells, fractions); cells of each type are drawn with
    replacement. One sparse (mixtures x cells) count matrix times the CSR reference builds all
    mixtures at once. Returns (counts mixtures x genes CSR, true cell fractions, type names).
    """
    lab = _labels(reference)
    k = len(lab.categories)
    prop = rng.dirichlet(np.ones(k), n_samples)
    n_sparse = int(n_samples * sparse_prob)
    n_zero = int(k * sparse_prob)
    if n_sparse and n_zero and k > 1:
        # random subset per row: rank a uniform matrix and zero the n_zero smallest
        ranks = np.argsort(np.argsort(rng.random((n_sparse, k)), axis=1), axis=1)
        prop[:n_sparse][ranks < n_zero] = 0.0
        prop[:n_sparse] /= prop[:n_sparse].sum(axis=1, keepdims=True)
    counts = rng.multinomial(n_cells, prop)  # mixtures x types
    # cells sorted by type: a draw of type t is start[t] + floor(u * size[t])
    order = np.argsort(lab.codes, kind="stable")
    size = np.bincount(lab.codes, minlength=k)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    draw_type = np.repeat(np.tile(np.arange(k), n_samples), counts.ravel())
    draw_row = np.repeat(np.arange(n_samples), counts.sum(axis=1))
    pick = order[start[draw_type] + np.floor(rng.random(draw_type.size) * size[draw_type]).astype(np.int64)]
    mix = sparse.csr_matrix((np.ones(pick.size), (draw_row, pick)), shape=(n_samples, reference.n_obs))
    x = reference.X if gene_pos is None else reference.X[:, gene_pos]
    summed = (mix @ _csr(x)).tocsr()
    return summed, counts / counts.sum(axis=1, keepdims=True), list(lab.categories)


def _scale_input(x: np.ndarray, lib: np.ndarray) -> np.ndarray:
    """CPM (with a given library size) -> log2(x+1) -> per-sample min-max to [0, 1]."""
    x = np.log2(x / np.where(lib > 0, lib, 1)[:, None] * 1e6 + 1.0)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def _zscore(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene standardisation with the training (pseudo-bulk) mean and sd."""
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return ((train - mu) / sd).astype(np.float32), ((test - mu) / sd).astype(np.float32)


def _train_mlp(kind: str, x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, epochs: int,
               batch_size: int, lr: float, recon: np.ndarray | None = None,
               tape_dropout: float = 0.5) -> np.ndarray:
    """Train the ``tape`` or ``scaden`` networks on (x, y); return predicted fractions for test."""
    import torch
    from torch import nn

    n_in, n_out = x.shape[1], y.shape[1]

    def mlp(widths: list[int], drops: list[float], act: type[nn.Module]) -> nn.Sequential:
        layers: list[nn.Module] = []
        prev = n_in
        for w, d in zip(widths, drops):
            layers += [nn.Linear(prev, w), act()]
            if d > 0:
                layers.append(nn.Dropout(d))
            prev = w
        layers.append(nn.Linear(prev, n_out))
        return nn.Sequential(*layers)

    xt, yt, tt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(test)
    rt = xt if recon is None else torch.from_numpy(recon)
    preds = []
    # the networks are tiny: one thread avoids thread-sync overhead (severe on a busy machine)
    # and keeps results independent of the core count; the caller's setting is restored
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # fork_rng: seed weight init and dropout without touching the caller's global RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            if kind == "scaden":
                nets = [mlp([256, 128, 64, 32], [0, 0, 0, 0], nn.ReLU),
                        mlp([512, 256, 128, 64], [0, 0.3, 0.2, 0.1], nn.ReLU),
                        mlp([1024, 512, 256, 128], [0, 0.6, 0.3, 0.1], nn.ReLU)]
                decoder = None
            else:
                nets = [mlp([512, 256, 128, 64], [tape_dropout] * 4, nn.CELU)]
                # TAPE: fractions @ relu(signature) reconstructs the input (linear mixing model)
                decoder = nn.Parameter(torch.rand(n_out, rt.shape[1], generator=gen) * 0.1)
            for net in nets:
                params = list(net.parameters()) + ([decoder] if decoder is not None else [])
                opt = torch.optim.Adam(params, lr=lr)
                net.train()
                n = xt.shape[0]
                for _ in range(epochs):
                    perm = torch.randperm(n, generator=gen)
                    for i in range(0, n, batch_size):
                        idx = perm[i:i + batch_size]
                        frac = torch.softmax(net(xt[idx]), dim=1)
                        loss = torch.nn.functional.l1_loss(frac, yt[idx])
                        if decoder is not None:
                            loss = loss + torch.nn.functional.l1_loss(frac @ torch.relu(decoder), rt[idx])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                net.eval()
                with torch.no_grad():
                    preds.append(torch.softmax(net(tt), dim=1).numpy().astype(np.float64))
    finally:
        torch.set_num_threads(n_threads)
    return np.mean(preds, axis=0)


def _mlp_method(kind: str, bulk: pd.DataFrame, reference: anndata.AnnData, seed: int = 42,
                n_pseudobulk: int = 1000, n_cells: int = 200, n_markers: int = 100,
                epochs: int | None = None, batch_size: int = 64, lr: float = 1e-3,
                scaling: str = "zscore", tape_dropout: float = 0.5,
                markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Simulate cell-level pseudo-bulks, train the networks, predict the real bulk."""
    ref_pos, bulk_pos = shared_genes(bulk, reference)
    prof = type_profiles(reference, ref_pos)
    genes = _chosen_markers(prof["mean"], n_markers, markers, reference, ref_pos)
    rng = np.random.default_rng(seed)
    print(f"simulating {n_pseudobulk} pseudo-bulks of {n_cells} cells", flush=True)
    summed, y, types = simulate_pseudobulk(reference, n_pseudobulk, n_cells, rng, ref_pos)
    sim_lib = np.asarray(summed.sum(axis=1)).ravel()
    x = _scale_input(summed[:, genes].toarray(), sim_lib)
    b = bulk_matrix(bulk, bulk_pos)
    test = _scale_input(b[:, genes], b.sum(axis=1))
    if epochs is None:
        epochs = 20 if kind == "tape" else 10
    if scaling not in ("zscore", "minmax"):
        raise InputError(f"fraction option scaling='{scaling}' is unknown; use zscore or minmax")
    recon = x  # TAPE's decoder reconstructs the non-negative min-max scaled input
    if scaling == "zscore":
        x, test = _zscore(x, test)
    print(f"training {kind} on {x.shape[0]} pseudo-bulks x {x.shape[1]} genes", flush=True)
    pred = _train_mlp(kind, x, y, test, seed, epochs, batch_size, lr, recon if kind == "tape" else None, tape_dropout)
    out = pd.DataFrame(_normalise_rows(pred), index=bulk.columns, columns=types)
    out.attrs["marker_genes"] = list(reference.var_names.astype(str)[ref_pos][genes])
    return out


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def estimate_sample_fractions(bulk: pd.DataFrame, reference: anndata.AnnData,
                              method: str = DEFAULT_METHOD, seed: int = 42, **kwargs) -> pd.DataFrame:
    """Cell-type fractions of every bulk sample.

    Args:
        bulk: genes x samples raw counts (index gene symbols).
        reference: raw counts (CSR), ``obs['celltype']``.
        method: one of :data:`METHODS`.
        seed: seeds every random step.
        **kwargs: estimator options (``nnls``: n_markers, gene_scale, cell_share; ``tape``/
            ``scaden``: n_pseudobulk, n_cells, n_markers, epochs, batch_size, lr).

    Returns:
        samples x cell types (columns sorted by name), rows non-negative and summing to 1.
    """
    if method not in METHODS:
        raise InputError(f"--method '{method}' is unknown; use one of {', '.join(METHODS)}")
    if bulk.shape[1] == 0:
        raise InputError("bulk_counts.tsv: no sample columns; give at least one bulk sample")
    if method == "wls":
        out = _wls(bulk, reference, seed=seed, **kwargs)
    elif method == "nnls":
        out = _nnls(bulk, reference, seed=seed, **kwargs)
    else:
        out = _mlp_method(method, bulk, reference, seed=seed, **kwargs)
    out.index.name = "sample"
    attrs = dict(out.attrs)
    out = out[sorted(out.columns)]
    out.attrs.update(attrs)
    return out


def group_fractions(sample_fractions: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Mean of the per-sample fractions over each group's samples (index ``group``, groups in
    order of first appearance in ``groups``)."""
    missing = sorted(set(groups["sample"].astype(str)) - set(sample_fractions.index.astype(str)))
    if missing:
        raise InputError(
            f"groups.csv: sample(s) {', '.join(missing)} have no estimated fractions (not in the "
            "bulk matrix); list only columns of bulk_counts.tsv"
        )
    sf = sample_fractions.copy()
    sf.index = sf.index.astype(str)
    g = groups.astype({"group": str, "sample": str})
    out = sf.loc[g["sample"].to_numpy()].groupby(g["group"].to_numpy(), sort=False).mean()
    out.index.name = "group"
    return out


#: How the number of cells per group is set (:func:`cell_number_rule`), as the console and the report say it.
CELL_RULES = {
    "library_size": "total = reference cells x group library size / reference counts, x --scale_size",
    "reference_cells": "TPM/FPKM carry no library size: total = the reference's cell number, x --scale_size",
    "cells_per_group": "--cells_per_group cells per group, split by the fractions",
}


def cell_number_rule(bulk: pd.DataFrame, cells_per_group: int | None = None) -> str:
    """``cells_per_group`` when given; else ``library_size`` for counts (omicverse's rule) and
    ``reference_cells`` for TPM/FPKM (``bulk.attrs['units']``), whose sums are no library sizes."""
    if cells_per_group:
        return "cells_per_group"
    return "library_size" if bulk.attrs.get("units", "counts") == "counts" else "reference_cells"


def total_cells(bulk: pd.DataFrame, groups: pd.DataFrame, reference: anndata.AnnData,
                cells_per_group: int | None = None) -> dict[str, float]:
    """The total cell number per group, by :func:`cell_number_rule`:

    * ``library_size``: n_reference_cells * L(group) / total reference counts, where L(group) is
      the library size of the group-mean bulk profile (sum over all bulk genes of the mean raw
      count over the group's samples), as omicverse's ``predicted_fraction``;
    * ``reference_cells``: the number of reference cells (after ``--max_single_cells``), i.e. as if
      the group's library equalled the reference's;
    * ``cells_per_group``: that number.
    """
    g = groups.astype({"group": str, "sample": str})
    missing = sorted(set(g["sample"]) - set(bulk.columns.astype(str)))
    if missing:
        raise InputError(f"groups.csv: sample(s) {', '.join(missing)} are not columns of bulk_counts.tsv; "
                         "fix the samplesheet or the bulk matrix")
    names = list(pd.unique(g["group"]))
    rule = cell_number_rule(bulk, cells_per_group)
    if rule == "cells_per_group":
        return {k: float(cells_per_group) for k in names}
    if rule == "reference_cells":
        return {k: float(reference.n_obs) for k in names}
    ref_total = float(reference.X.sum())
    if ref_total <= 0:
        raise InputError("reference.h5ad: X sums to 0; the reference must hold raw counts")
    col_totals = bulk.sum(axis=0)
    col_totals.index = col_totals.index.astype(str)
    lib = col_totals.loc[g["sample"].to_numpy()].groupby(g["group"].to_numpy(), sort=False).mean()
    return {k: float(reference.n_obs * v / ref_total) for k, v in lib.items()}


def cell_targets(bulk: pd.DataFrame, groups: pd.DataFrame, reference: anndata.AnnData,
                 group_fracs: pd.DataFrame, scale_size: float = 2, cells_per_group: int | None = None) -> pd.DataFrame:
    """Number of cells to generate per group and type (as omicverse's ``predicted_fraction``).

    n_cells = int(fraction * total * scale_size), at least 1, with total from :func:`total_cells`;
    with ``cells_per_group`` n_cells = int(fraction * cells_per_group) (scale_size not applied).

    Returns columns ``group, celltype, fraction, n_cells`` (groups in ``group_fracs`` order,
    cell types sorted; every reference type is listed, a type without a fraction gets 0).
    """
    types = sorted(set(_labels(reference).categories) | set(map(str, group_fracs.columns)))
    fr = group_fracs.copy()
    fr.columns = fr.columns.astype(str)
    fr = fr.reindex(columns=types, fill_value=0.0)
    totals = total_cells(bulk, groups, reference, cells_per_group)
    total = np.array([totals[str(k)] for k in fr.index], dtype=np.float64)
    factor = 1.0 if cells_per_group else float(scale_size)
    raw = fr.to_numpy(dtype=np.float64) * total[:, None] * factor
    n = np.maximum(np.floor(raw).astype(np.int64), 1)
    out = pd.DataFrame({
        "group": np.repeat(fr.index.astype(str).to_numpy(), len(types)),
        "celltype": np.tile(types, len(fr)),
        "fraction": fr.to_numpy(dtype=np.float64).ravel(),
        "n_cells": n.ravel(),
    })
    return out


def fraction_accuracy(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Pearson r, RMSE and Lin's CCC over all (sample, cell type) entries.

    Rows are matched by sample name (the shared ones) and columns by cell type (union; a type
    missing on one side counts as 0 there).
    """
    p, t = pred.copy(), truth.copy()
    p.index, t.index = p.index.astype(str), t.index.astype(str)
    p.columns, t.columns = p.columns.astype(str), t.columns.astype(str)
    rows = p.index.intersection(t.index)
    if rows.empty:
        raise ValueError("prediction and truth share no sample names")
    cols = sorted(set(p.columns) | set(t.columns))
    a = p.loc[rows].reindex(columns=cols, fill_value=0.0).to_numpy(dtype=np.float64).ravel()
    b = t.loc[rows].reindex(columns=cols, fill_value=0.0).to_numpy(dtype=np.float64).ravel()
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    rmse = float(np.sqrt(np.mean((a - b) ** 2)))
    ccc = float(2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2))
    return {"r": r, "rmse": rmse, "ccc": ccc}


def timed_estimate(bulk: pd.DataFrame, reference: anndata.AnnData, method: str = DEFAULT_METHOD,
                   seed: int = 42, **kwargs) -> tuple[pd.DataFrame, float]:
    """:func:`estimate_sample_fractions` plus its wall-clock seconds."""
    t0 = time.perf_counter()
    out = estimate_sample_fractions(bulk, reference, method=method, seed=seed, **kwargs)
    return out, time.perf_counter() - t0
