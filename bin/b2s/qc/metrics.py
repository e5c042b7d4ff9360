"""QC stage: how well do the generated cells match the reference and the targets?

- :func:`celltype_proportions`: reference vs target vs generated vs filtered proportions.
- :func:`marker_correlation`: the seed's marker correlation (omicverse
  ``bulk2single_plot_correlation``): wilcoxon markers per reference type, per-type mean
  expression of reference and generated cells on the union of those markers, Pearson r for every
  (reference type, generated type) pair.
- :func:`embed`: MDE (pymde, as ``ov.utils.mde``) of a joint PCA of reference and generated cells.
- :func:`knn_typing` / :func:`typing_summary`: kNN typing of generated cells by a classifier fit
  on reference cells (PCA of the reference + k nearest neighbours), beside the reference's own
  leave-one-out accuracy: realism without held-out data.
- :func:`qc_metrics`: one JSON-able dict of the numbers above.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s.errors import InputError
from b2s.utils import indicator

CELLTYPE = "celltype"


def _log(msg: str) -> None:
    print(f"[qc] {msg}", flush=True)


def _types(adata: ad.AnnData) -> pd.Series:
    if CELLTYPE not in adata.obs:
        raise InputError(f"AnnData has no obs['{CELLTYPE}'] column (found: "
                         f"{', '.join(map(str, adata.obs.columns)) or 'none'}); pass the "
                         "model_input.h5ad / generated h5ad written by this pipeline")
    return adata.obs[CELLTYPE].astype(str)


def ordered_types(reference: ad.AnnData) -> list[str]:
    col = reference.obs[CELLTYPE]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.astype(str))
        return [str(c) for c in col.cat.categories if str(c) in present]
    return sorted(set(col.astype(str)))


def celltype_proportions(reference: ad.AnnData, targets: pd.DataFrame, generated: ad.AnnData,
                         filtered: ad.AnnData) -> pd.DataFrame:
    """Cell-type counts and fractions of the four cell sets of one group.

    ``targets`` has columns ``celltype, n_cells`` (rows of cell_targets.csv for one group).
    Returns a frame indexed by cell type (reference types first, then any other type) with count
    columns ``n_reference, n_target, n_generated, n_filtered`` and fraction columns
    ``reference, target, generated, filtered`` (each fraction column sums to 1, or is all 0 when
    the set is empty).
    """
    missing = {"celltype", "n_cells"} - set(targets.columns)
    if missing:
        raise InputError(f"cell targets table lacks column(s) {sorted(missing)}; pass the "
                         "cell_targets.csv written by ESTIMATE_FRACTIONS (group,celltype,fraction,n_cells)")
    tgt = targets.assign(celltype=targets["celltype"].astype(str)).groupby("celltype")["n_cells"].sum()
    counts = {
        "reference": _types(reference).value_counts(),
        "target": tgt,
        "generated": _types(generated).value_counts(),
        "filtered": _types(filtered).value_counts(),
    }
    order = ordered_types(reference)
    extra = sorted(set().union(*[set(c.index) for c in counts.values()]) - set(order))
    index = pd.Index(order + extra, name="celltype")
    out = pd.DataFrame(index=index)
    for name, c in counts.items():
        out[f"n_{name}"] = c.reindex(index).fillna(0).astype(int)
    for name in counts:
        n = out[f"n_{name}"]
        out[name] = n / n.sum() if n.sum() > 0 else 0.0
    return out


def _group_means(x: Any, labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Mean row of ``x`` (cells x genes, sparse or dense) per label, as groups x genes."""
    ind = indicator(pd.Categorical(labels, categories=groups).codes, len(groups))
    sums = ind @ x  # sparse product: no densification of the cell matrix
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    n = np.asarray(ind.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n[:, None]


def _pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every row of ``a`` and every row of ``b`` (NaN where a row is constant)."""
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    na = np.sqrt((ac**2).sum(axis=1))
    nb = np.sqrt((bc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac @ bc.T) / np.outer(na, nb)
    r[~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def reference_markers(reference: ad.AnnData, top_n: int = 200) -> dict[str, list[str]]:
    """Top ``top_n`` wilcoxon markers (one type vs the rest) per reference cell type.

    Uses X (log-normalised), never ``.raw``. Types with fewer than 2 cells cannot be tested and get
    no markers. (The seed asks scanpy for its default 100 genes and then takes ``head(200)``, i.e.
    100 markers; here ``top_n`` markers are really requested.)
    """
    import scanpy as sc

    labels = _types(reference)
    counts = labels.value_counts()
    testable = [t for t in ordered_types(reference) if counts.get(t, 0) >= 2]
    markers: dict[str, list[str]] = {t: [] for t in ordered_types(reference)}
    if not testable or len(counts) < 2:
        _log("fewer than 2 cell types (or none with >= 2 cells): no wilcoxon markers")
        return markers
    light = ad.AnnData(X=reference.X, obs=pd.DataFrame({"ct": pd.Categorical(labels)},
                                                         index=reference.obs_names.copy()),
                       var=pd.DataFrame(index=reference.var_names.copy()))
    n_genes = int(min(top_n, light.n_vars))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(light, "ct", groups=testable, reference="rest", method="wilcoxon",
                                n_genes=n_genes, use_raw=False)
    names = light.uns["rank_genes_groups"]["names"]
    for t in testable:
        markers[t] = [str(g) for g in names[t]]
    return markers


def marker_correlation(reference: ad.AnnData, generated: ad.AnnData, top_n: int = 200,
                       markers: dict[str, list[str]] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correlation of per-type mean marker expression between reference and generated cells.

    Markers: the top ``top_n`` wilcoxon markers of each reference type (computed unless
    ``markers`` is given); their union, restricted to genes present in ``generated``, is the gene
    set of the correlation matrix (as in the seed).

    Returns
    -------
    summary
        One row per reference type: ``celltype, pearson_r`` (r between the type's reference and
        generated mean profiles over the union of markers, i.e. the matrix diagonal),
        ``n_markers`` (size of that union), ``pearson_r_own`` / ``n_own_markers`` (the same r on the
        type's own markers only), ``best_match`` (the generated type with the highest r in the
        type's matrix row), ``r_margin`` (r with its own generated type minus the highest r with
        any other generated type: > 0 when the generated cells of the type are told apart from
        the others; NaN without a finite r or with fewer than 2 generated types),
        ``n_reference``, ``n_generated`` and ``note`` (why r is NaN).
    matrix
        Pearson r, reference types (rows) x generated types (columns).
    """
    if markers is None:
        markers = reference_markers(reference, top_n)
    ref_types = ordered_types(reference)
    gen_labels = _types(generated).to_numpy()
    gen_counts = pd.Series(gen_labels).value_counts()
    gen_types = [t for t in ref_types if t in gen_counts.index] + sorted(
        set(gen_counts.index) - set(ref_types))
    gen_genes = pd.Index(generated.var_names)
    union: list[str] = list(dict.fromkeys(g for t in ref_types for g in markers.get(t, [])
                                          if g in gen_genes))
    ref_labels = _types(reference).to_numpy()
    ref_counts = pd.Series(ref_labels).value_counts()

    if union and gen_types:
        ref_pos = pd.Index(reference.var_names).get_indexer(union)
        if (ref_pos < 0).any():
            raise InputError("marker genes missing from the reference; pass the same "
                             "model_input.h5ad that the markers were computed on")
        gen_pos = gen_genes.get_indexer(union)
        ref_mean = _group_means(reference.X[:, ref_pos], ref_labels, ref_types)
        gen_mean = _group_means(generated.X[:, gen_pos], gen_labels, gen_types)
        mat = _pearson_matrix(ref_mean, gen_mean)
    else:
        ref_mean = gen_mean = None
        mat = np.full((len(ref_types), len(gen_types)), np.nan)
    matrix = pd.DataFrame(mat, index=pd.Index(ref_types, name="reference"),
                          columns=pd.Index(gen_types, name="generated"))

    best_match, margin = _row_identity(matrix)
    rows = []
    union_pos = {g: i for i, g in enumerate(union)}
    for i, t in enumerate(ref_types):
        note = ""
        r = r_own = np.nan
        own = [union_pos[g] for g in markers.get(t, []) if g in union_pos]
        if t not in gen_counts.index:
            note = "absent from generated cells"
        elif not union:
            note = "no marker genes shared with generated cells"
        else:
            j = gen_types.index(t)
            r = matrix.iloc[i, j]
            if own and ref_mean is not None:
                r_own = _pearson_matrix(ref_mean[i:i + 1, own], gen_mean[j:j + 1, own])[0, 0]
            if not own:
                note = "no wilcoxon markers (fewer than 2 reference cells)"
            if not np.isfinite(r):
                note = note or "constant mean profile: r undefined"
        rows.append({"celltype": t, "pearson_r": r, "n_markers": len(union),
                     "pearson_r_own": r_own, "n_own_markers": len(own),
                     "best_match": best_match[i], "r_margin": margin[i],
                     "n_reference": int(ref_counts.get(t, 0)),
                     "n_generated": int(gen_counts.get(t, 0)), "note": note})
    summary = pd.DataFrame(rows, columns=["celltype", "pearson_r", "n_markers", "pearson_r_own",
                                          "n_own_markers", "best_match", "r_margin", "n_reference",
                                          "n_generated", "note"])
    return summary, matrix


def _row_identity(matrix: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Per reference type (row): the best-matching generated type and the own-vs-best-other margin.

    An undertrained VAE generates nearly the same average cell for every type: each row of the
    matrix is then flat, r is high everywhere and the margin is ~0, which r alone cannot show.
    """
    m = matrix.to_numpy(dtype=float)
    cols = list(matrix.columns)
    filled = np.where(np.isfinite(m), m, -np.inf)
    best_match = [str(cols[j]) if np.isfinite(filled[i, j]) else "" for i, j in
                  enumerate(filled.argmax(axis=1))] if cols else [""] * len(m)
    own_col = np.array([cols.index(t) if t in cols else -1 for t in matrix.index])
    margin = np.full(len(m), np.nan)
    if len(cols) >= 2:
        rows = np.flatnonzero(own_col >= 0)
        own = m[rows, own_col[rows]]
        others = filled[rows].copy()
        others[np.arange(len(rows)), own_col[rows]] = -np.inf
        best_other = others.max(axis=1)
        ok = np.isfinite(own) & np.isfinite(best_other)
        margin[rows[ok]] = own[ok] - best_other[ok]
    return best_match, margin


class KnnTyper:
    """kNN cell-type classifier fit on ``train`` cells: PCA of ``train`` alone (its ``n_top_genes``
    most variable genes, centred, ``n_comps`` components), then ``n_neighbors`` nearest neighbours.

    Cells are log-normalised (normalize_total 1e4 + log1p). The test cells cannot shape the space.
    """

    def __init__(self, train: ad.AnnData, n_neighbors: int = 15, n_comps: int = 50,
                 n_top_genes: int = 2000, seed: int = 0) -> None:
        from sklearn.decomposition import PCA
        from sklearn.neighbors import KNeighborsClassifier

        self.labels = _types(train).to_numpy()
        self.genes = pd.Index(train.var_names)
        xt = sp.csr_matrix(train.X, dtype=np.float32)
        mean = np.asarray(xt.mean(axis=0)).ravel()
        var = np.asarray(xt.multiply(xt).mean(axis=0)).ravel() - mean ** 2
        self.top = np.sort(np.argsort(-var, kind="stable")[: min(n_top_genes, len(self.genes))])
        dense = xt[:, self.top].toarray()
        k = int(max(1, min(n_comps, dense.shape[0] - 1, dense.shape[1])))
        self.pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(dense)
        self.train_pcs = self.pca.transform(dense)
        self.knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(self.labels))).fit(
            self.train_pcs, self.labels)
        self._loo: np.ndarray | None = None

    def transform(self, cells: ad.AnnData) -> np.ndarray:
        """PCA coordinates of ``cells`` (their genes aligned to the training genes; missing = 0)."""
        pos = pd.Index(cells.var_names).get_indexer(self.genes[self.top])
        if (pos < 0).all():
            raise InputError("reference and generated cells share no genes; pass the model_input.h5ad "
                             "the VAE was trained on")
        x = sp.csr_matrix(cells.X, dtype=np.float32)
        dense = np.zeros((x.shape[0], len(pos)), dtype=np.float32)
        dense[:, pos >= 0] = x[:, pos[pos >= 0]].toarray()
        return self.pca.transform(dense)

    def predict(self, cells: ad.AnnData) -> np.ndarray:
        """Predicted cell type of each cell."""
        if cells.n_obs == 0:
            return np.zeros(0, dtype=object)
        return self.knn.predict(self.transform(cells))

    def predict_train_loo(self) -> np.ndarray:
        """Leave-one-out prediction of the training cells (each cell's neighbours exclude itself)."""
        if self._loo is None:  # cached: QC of several groups asks once per group
            self._loo = self._train_loo()
        return self._loo.copy()

    def _train_loo(self) -> np.ndarray:
        k = self.knn.n_neighbors
        if len(self.labels) <= k:
            k = len(self.labels) - 1
        if k < 1:
            return self.labels.copy()
        _, idx = self.knn.kneighbors(self.train_pcs, n_neighbors=k + 1)
        votes = self.labels[idx[:, 1:]]
        cats, inv = np.unique(votes, return_inverse=True)
        counts = np.zeros((len(self.labels), len(cats)), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(self.labels)), k), inv.ravel()), 1)
        return cats[counts.argmax(axis=1)]


def knn_typing(train: ad.AnnData, test: ad.AnnData, n_neighbors: int = 15, n_comps: int = 50,
               n_top_genes: int = 2000, seed: int = 0) -> np.ndarray:
    """Cell type of each ``test`` cell by a :class:`KnnTyper` fit on ``train``."""
    return KnnTyper(train, n_neighbors, n_comps, n_top_genes, seed).predict(test)


def reference_loo_typing(reference: ad.AnnData, n_neighbors: int = 15, n_comps: int = 50,
                         n_top_genes: int = 2000, seed: int = 0) -> np.ndarray:
    """Leave-one-out kNN typing of the reference's own cells (each cell's neighbours exclude itself)."""
    return KnnTyper(reference, n_neighbors, n_comps, n_top_genes, seed).predict_train_loo()


#: Below this ratio of generated-cell typing accuracy to the reference's own (leave-one-out)
#: accuracy the QC warns (benchmarks/README.md, realism section).
MIN_TYPING_RATIO = 0.6


def typing_summary(reference: ad.AnnData, generated: ad.AnnData, seed: int = 0,
                   typer: KnnTyper | None = None) -> dict[str, Any]:
    """Typing accuracy of generated cells by a classifier fit on the reference, and the reference's own.

    ``typer``: a :class:`KnnTyper` already fit on ``reference`` with ``seed`` (QC of several groups
    in one process fits it once); None fits it here.

    Returns ``typing_accuracy`` (share of generated cells whose kNN type is their label),
    ``typing_accuracy_reference`` (leave-one-out accuracy of the reference cells, weighted to the
    generated cells' type composition so the two compare), their ratio, ``typing_per_celltype``
    and ``warnings``.
    """
    gen_labels = _types(generated).to_numpy()
    if generated.n_obs == 0 or reference.n_obs < 3:
        return {"typing_accuracy": None, "typing_accuracy_reference": None, "typing_ratio": None,
                "typing_per_celltype": {}, "warnings": []}
    typer = KnnTyper(reference, seed=seed) if typer is None else typer
    pred = typer.predict(generated)
    ref_labels = typer.labels
    loo = typer.predict_train_loo()
    per_type = {}
    weights, ref_acc = [], []
    for t in pd.unique(gen_labels):
        m = gen_labels == t
        r = ref_labels == t
        acc_ref = float((loo[r] == t).mean()) if r.any() else np.nan
        per_type[str(t)] = {"generated": _nan_to_none(float((pred[m] == t).mean())),
                            "reference": _nan_to_none(acc_ref)}
        weights.append(m.sum())
        ref_acc.append(acc_ref)
    acc = float((pred == gen_labels).mean())
    w = np.asarray(weights, float)
    ra = np.asarray(ref_acc, float)
    ok = np.isfinite(ra)
    ref_w = float((w[ok] * ra[ok]).sum() / w[ok].sum()) if ok.any() else np.nan
    ratio = acc / ref_w if np.isfinite(ref_w) and ref_w > 0 else np.nan
    warnings = []
    if np.isfinite(ratio) and ratio < MIN_TYPING_RATIO:
        warnings.append(
            f"generated cells are typed far worse than the reference's own cells (kNN typing accuracy "
            f"{acc:.2f} vs {ref_w:.2f} for reference cells, a classifier fit on the reference): the cell "
            "types are mixed; the VAE is likely undertrained or collapsed: raise --epoch_num and check "
            "that the training loss has left its early plateau")
    return {"typing_accuracy": _nan_to_none(acc), "typing_accuracy_reference": _nan_to_none(ref_w),
            "typing_ratio": _nan_to_none(ratio), "typing_per_celltype": per_type, "warnings": warnings}


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


def _l1(p: pd.Series, q: pd.Series) -> float:
    return float(np.abs(p.to_numpy(float) - q.to_numpy(float)).sum())


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


#: Below this share of cell types told apart (``r_margin > 0``) the QC warns that the generated
#: cells do not separate by type (an undertrained VAE tells few types apart on the bundled data,
#: a trained one all; docs/output.md, "Reading the identity check").
MIN_IDENTITY_RATE = 0.5
#: Below this median own-vs-best-other r margin the types are told apart in name only: a run of
#: the seed's settings on the Hao PBMC reference (mixed MDE) had a margin near 0, well-trained runs
#: have margins of several hundredths (benchmarks/README.md, realism section).
MIN_MEDIAN_MARGIN = 0.01


def vae_identity_of(generated: ad.AnnData) -> dict[str, Any] | None:
    """The VAE's own type separation that GENERATE recorded (``uns['vae_identity']``, see
    :func:`b2s.generate.cells.vae_identity`) as metrics keys, or None when the cells carry none."""
    raw = generated.uns.get("vae_identity") if hasattr(generated, "uns") else None
    try:
        d = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        d = None
    if not isinstance(d, dict) or d.get("told_apart") is None:
        return None
    return {"vae_celltypes_identified": int(d["told_apart"]), "vae_celltypes_assessed": int(d["n_types"]),
            "vae_margin_median": _nan_to_none(d.get("median_margin"))}


def identity_summary(corr_summary: pd.DataFrame) -> dict[str, Any]:
    """How many reference types the generated cells reproduce distinctly, plus a warning if few.

    Returns ``n_celltypes_identified`` (``r_margin > 0``), ``n_celltypes_assessed`` (finite
    margin), ``celltype_identity_rate``, ``marker_r_margin_median`` and ``warnings`` (list of
    plain sentences, empty when fine). It warns when fewer than :data:`MIN_IDENTITY_RATE` of the
    types are told apart, or when the median margin is below :data:`MIN_MEDIAN_MARGIN` (types
    "told apart" by a hair are not told apart).
    """
    margin = corr_summary["r_margin"].to_numpy(float) if "r_margin" in corr_summary else np.array([])
    assessed = np.isfinite(margin)
    n_ok, n = int((margin[assessed] > 0).sum()), int(assessed.sum())
    rate = n_ok / n if n else None
    med = float(np.median(margin[assessed])) if n else None
    warnings = []
    if n >= 2 and (rate < MIN_IDENTITY_RATE or med < MIN_MEDIAN_MARGIN):
        warnings.append(
            f"generated cells of different types are not distinguishable by marker expression ({n_ok} of "
            f"{n} types told apart, median margin {med:.4f}, needs >= {MIN_MEDIAN_MARGIN}): the cell types "
            "are mixed (see the MDE plot) and the VAE is likely undertrained; rerun with a higher "
            "--epoch_num and --patience (the loss must be well past its early plateau) and check the "
            "typing accuracy below")
    return {"n_celltypes_identified": n_ok, "n_celltypes_assessed": n,
            "celltype_identity_rate": _nan_to_none(rate), "marker_r_margin_median": _nan_to_none(med),
            "warnings": warnings}


def qc_metrics(props: pd.DataFrame, corr_summary: pd.DataFrame, params: dict[str, Any],
               filter_summary: dict[str, Any] | None = None,
               corr_summary_unfiltered: pd.DataFrame | None = None,
               typing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary numbers of one group as a JSON-able dict (NaN written as null).

    ``props`` from :func:`celltype_proportions`, ``corr_summary`` from
    :func:`marker_correlation` (on the filtered cells); optional correlation of the unfiltered
    generated cells, the FILTER summary and the kNN typing (:func:`typing_summary`).
    """
    n_gen = int(props["n_generated"].sum())
    n_filt = int(props["n_filtered"].sum())
    r = corr_summary["pearson_r"].to_numpy(float)
    missing = corr_summary.loc[~np.isfinite(r), "celltype"].astype(str).tolist()
    by_type = corr_summary.set_index("celltype")
    per_type = {
        str(t): {"reference": int(row.n_reference), "target": int(row.n_target),
                 "generated": int(row.n_generated), "filtered": int(row.n_filtered),
                 "pearson_r": _nan_to_none(by_type["pearson_r"].get(t, np.nan)),
                 "r_margin": _nan_to_none(by_type["r_margin"].get(t, np.nan))
                 if "r_margin" in by_type else None}
        for t, row in props.iterrows()}
    identity = identity_summary(corr_summary)
    out: dict[str, Any] = {
        "n_target": int(props["n_target"].sum()),
        "n_generated": n_gen,
        "n_filtered": n_filt,
        "fraction_kept": _nan_to_none(n_filt / n_gen) if n_gen else None,
        "n_celltypes_reference": int((props["n_reference"] > 0).sum()),
        "n_celltypes_generated": int((props["n_generated"] > 0).sum()),
        "n_celltypes_filtered": int((props["n_filtered"] > 0).sum()),
        "marker_r_mean": _nan_to_none(np.nanmean(r)) if np.isfinite(r).any() else None,
        "marker_r_median": _nan_to_none(np.nanmedian(r)) if np.isfinite(r).any() else None,
        "marker_r_min": _nan_to_none(np.nanmin(r)) if np.isfinite(r).any() else None,
        "n_markers": int(corr_summary["n_markers"].max()) if len(corr_summary) else 0,
        "celltypes_without_r": missing,
        **{k: v for k, v in identity.items() if k != "warnings"},
        "proportion_l1": {
            "target_vs_generated": round(_l1(props["target"], props["generated"]), 6),
            "target_vs_filtered": round(_l1(props["target"], props["filtered"]), 6),
            "generated_vs_filtered": round(_l1(props["generated"], props["filtered"]), 6),
        },
        "per_celltype": per_type,
    }
    if corr_summary_unfiltered is not None:
        ru = corr_summary_unfiltered["pearson_r"].to_numpy(float)
        out["marker_r_mean_unfiltered"] = (_nan_to_none(np.nanmean(ru))
                                           if np.isfinite(ru).any() else None)
    if filter_summary is not None:
        out["filter"] = {k: v for k, v in filter_summary.items() if k != "params"}
    out["warnings"] = list(identity["warnings"])
    if typing is not None:
        out.update({k: v for k, v in typing.items() if k != "warnings"})
        out["warnings"] += typing.get("warnings") or []
    out["params"] = params
    return out


def read_cells(path: str, arg: str, producer: str, need_celltype: bool = True) -> ad.AnnData:
    """Read an h5ad written by an earlier stage, checked; X becomes CSR float32.

    ``arg`` names the command-line option and ``producer`` the stage that writes the file, for
    one-line errors.
    """
    import os

    if not os.path.isfile(path):
        raise InputError(f"{arg} {path} does not exist; pass the file written by {producer}")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # truncated / not HDF5
        raise InputError(f"{arg} {path} is not a readable h5ad file ({type(err).__name__}); "
                         f"rerun {producer}") from None
    if adata.n_vars < 1:
        raise InputError(f"{arg} {path} has no genes; rerun {producer}")
    x = adata.X
    adata.X = (x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))).astype(np.float32)
    if adata.X.nnz and not np.isfinite(adata.X.data).all():
        raise InputError(f"{arg} {path} X contains NaN or infinite values; rerun {producer}")
    if need_celltype and CELLTYPE not in adata.obs:
        raise InputError(f"{arg} {path} has no obs['{CELLTYPE}']; pass the file written by {producer}")
    return adata


def read_targets(path: str, group: str) -> pd.DataFrame:
    """Rows ``celltype, fraction, n_cells`` of ``group`` from cell_targets.csv, checked."""
    import os

    if not os.path.isfile(path):
        raise InputError(f"--targets {path} does not exist; pass the cell_targets.csv written by "
                         "ESTIMATE_FRACTIONS")
    try:
        df = pd.read_csv(path, dtype={"group": str, "celltype": str})
    except Exception as err:
        raise InputError(f"--targets {path} is not a readable CSV ({type(err).__name__}); pass "
                         "ESTIMATE_FRACTIONS' cell_targets.csv") from None
    missing = [c for c in ("group", "celltype", "n_cells") if c not in df.columns]
    if missing:
        raise InputError(f"--targets {path} lacks column(s) {', '.join(missing)} (found: "
                         f"{', '.join(map(str, df.columns))}); it must have group,celltype,fraction,n_cells")
    rows = df[df["group"] == group]
    if rows.empty:
        raise InputError(f"--group '{group}' is not in --targets {path} (groups: "
                         f"{', '.join(pd.unique(df['group']).astype(str))}); pass one of them")
    n = pd.to_numeric(rows["n_cells"], errors="coerce")
    if n.isna().any() or (n < 0).any():
        raise InputError(f"--targets {path} has missing or negative n_cells for group '{group}'; "
                         "n_cells must be whole numbers >= 0")
    return rows.assign(n_cells=n.astype(int)).drop(columns="group").reset_index(drop=True)
