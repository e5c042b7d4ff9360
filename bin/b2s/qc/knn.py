"""kNN typing: a classifier fitted on the reference labels the generated cells (and the reference, leave-one-out)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s.errors import InputError
from b2s.qc.metrics import celltypes_of, nan_to_none


class KnnTyper:
    """kNN cell-type classifier fit on ``train`` cells: PCA of ``train`` alone (its ``n_top_genes``
    most variable genes, centred, ``n_comps`` components), then ``n_neighbors`` nearest neighbours.

    Cells are log-normalised (normalize_total 1e4 + log1p). The test cells cannot shape the space.
    """

    def __init__(self, train: ad.AnnData, n_neighbors: int = 15, n_comps: int = 50,
                 n_top_genes: int = 2000, seed: int = 0) -> None:
        from sklearn.decomposition import PCA
        from sklearn.neighbors import KNeighborsClassifier

        self.labels = celltypes_of(train).to_numpy()
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
    gen_labels = celltypes_of(generated).to_numpy()
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
        per_type[str(t)] = {"generated": nan_to_none(float((pred[m] == t).mean())),
                            "reference": nan_to_none(acc_ref)}
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
    return {"typing_accuracy": nan_to_none(acc), "typing_accuracy_reference": nan_to_none(ref_w),
            "typing_ratio": nan_to_none(ratio), "typing_per_celltype": per_type, "warnings": warnings}
