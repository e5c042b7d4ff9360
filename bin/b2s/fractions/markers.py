"""Marker genes for fraction estimation: a between-type test on the full gene space, or a file.

:func:`pairwise_markers` scores every gene for every ORDERED pair of cell types (t over u) with
Welch's t statistic on per-cell log1p(counts per 10k) (so sequencing depth per cell does not
decide), keeps genes whose mean CP10k is >= ``min_fold`` times higher in t than in u, and takes
the ``n_per_pair`` best per pair. The union over all pairs holds, for every two similar types
(CD4 vs CD8 T cells), the genes that tell exactly those two apart, which a "type vs the highest
other type" fold change misses. All pairs are scored at once (types x types x genes arrays);
the statistics come from two sparse indicator products, so the reference is never densified.

:func:`read_markers` reads a curated ``celltype,gene`` CSV (``--markers``) and checks it
against the reference, with one-line errors naming the file, the problem and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from scipy import sparse

from b2s._constants import CELLTYPE, GENE
from b2s.errors import InputError
from b2s.utils import indicator


def _cp10k(x: sparse.csr_matrix) -> sparse.csr_matrix:
    """Per-cell counts per 10,000, sparse (empty cells stay zero)."""
    lib = np.asarray(x.sum(axis=1)).ravel()
    return sparse.csr_matrix(sparse.diags(1e4 / np.where(lib > 0, lib, 1.0)) @ x)


def type_moments(x: sparse.csr_matrix, codes: np.ndarray, n_types: int) -> dict[str, np.ndarray]:
    """Per-type mean and variance (types x genes) of per-cell log1p(CP10k) and mean CP10k.

    Two sparse indicator products (sum of y and of y^2) per statistic; cell counts ``n``.
    """
    n = np.bincount(codes, minlength=n_types).astype(np.float64)
    ind = indicator(codes, n_types)
    cp = _cp10k(x)
    y = cp.copy()
    y.data = np.log1p(y.data)  # log1p(CP10k): zeros stay zeros
    s1 = np.asarray((ind @ y).todense())
    y2 = y.copy()
    y2.data **= 2
    s2 = np.asarray((ind @ y2).todense())
    mean = s1 / n[:, None]
    var = np.maximum(s2 / n[:, None] - mean ** 2, 0.0) * (n / np.maximum(n - 1, 1))[:, None]
    cp_mean = np.asarray((ind @ cp).todense()) / n[:, None]
    return {"mean": mean, "var": var, "cp10k": cp_mean, "n": n}


def pairwise_markers(x: sparse.csr_matrix, codes: np.ndarray, n_types: int, n_per_pair: int = 30,
                     min_fold: float = 2.0, min_t: float = 2.0) -> np.ndarray:
    """Sorted gene positions: union over ordered type pairs (t, u) of the ``n_per_pair`` genes
    with the largest Welch t (t over u) among genes with CP10k fold change >= ``min_fold``
    and t >= ``min_t``.

    ``x`` cells x genes raw counts (CSR), ``codes`` the cells' type codes 0..n_types-1.
    """
    m = type_moments(x, codes, n_types)
    if n_types == 1:
        return np.sort(np.argsort(-m["cp10k"][0])[: n_per_pair])
    se2 = m["var"] / m["n"][:, None]  # types x genes
    # t[i, j, g]: type i over type j
    diff = m["mean"][:, None, :] - m["mean"][None, :, :]
    denom = np.sqrt(se2[:, None, :] + se2[None, :, :] + 1e-12)
    t = diff / denom
    cp = m["cp10k"]
    fold = (cp[:, None, :] + 1e-3) / (cp[None, :, :] + 1e-3)
    ok = (fold >= min_fold) & (t >= min_t)
    score = np.where(ok, t, -np.inf)
    eye = np.eye(n_types, dtype=bool)
    score[eye] = -np.inf
    k = min(n_per_pair, score.shape[2])
    # top-k per pair without a full sort: argpartition along genes
    top = np.argpartition(-score, k - 1, axis=2)[:, :, :k]
    valid = np.take_along_axis(score, top, axis=2) > -np.inf
    genes = np.unique(top[valid])
    if genes.size < n_types:  # degenerate reference (no gene passes): the most expressed genes
        genes = np.argsort(-cp.sum(axis=0))[: max(n_per_pair, n_types)]
    return np.sort(genes)


def read_markers(path: str | Path, types: list[str], genes: list[str]) -> dict[str, list[str]]:
    """A ``celltype,gene`` CSV (TSV and .gz accepted) as {type: [genes]} in file order.

    Checks (each a one-line :class:`InputError` naming the file): readable and non-empty,
    columns ``celltype`` and ``gene``, every cell type known to the reference, every reference
    type with at least one marker gene shared by the bulk and the reference. Marker genes not
    shared are dropped silently only if the type keeps others (the error names them otherwise).
    """
    p = Path(path)
    what = f"--markers {p}"
    fix_cols = "give a CSV with header 'celltype,gene' and one row per marker gene"
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{what}: cannot be read ({err}); {fix_cols}") from None
    header = text.split("\n", 1)[0]
    delim = "\t" if "\t" in header and "," not in header else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{what}: the file is empty; {fix_cols}")
    keys = [c.strip().lower() for c in rows[0]]
    missing = [c for c in (CELLTYPE, GENE) if c not in keys]
    if missing:
        raise InputError(f"{what}: missing column(s) {', '.join(missing)} (found: {', '.join(keys) or 'none'}); {fix_cols}")
    it, ig = keys.index(CELLTYPE), keys.index(GENE)
    pairs = [(r[it].strip() if it < len(r) else "", r[ig].strip() if ig < len(r) else "") for r in rows[1:]]
    pairs = [(t, g) for t, g in pairs if t or g]
    if not pairs:
        raise InputError(f"{what}: no marker rows below the header; {fix_cols}")
    blank = [i + 2 for i, (t, g) in enumerate(pairs) if not t or not g]
    if blank:
        raise InputError(f"{what}: line(s) {', '.join(map(str, blank[:5]))} have an empty celltype or gene; fill or remove them")
    known = set(types)
    unknown = sorted({t for t, _ in pairs} - known)
    if unknown:
        raise InputError(f"{what}: cell type(s) {', '.join(unknown[:5])} are not in the reference "
                         f"(its types: {', '.join(types)}); use the reference's cell-type names")
    shared = set(genes)
    out: dict[str, list[str]] = {t: [] for t in types}
    not_shared: dict[str, list[str]] = {t: [] for t in types}
    for t, g in pairs:
        (out if g in shared else not_shared)[t].append(g)
    none_listed = [t for t in types if not out[t] and not not_shared[t]]
    if none_listed:
        raise InputError(f"{what}: cell type(s) {', '.join(none_listed[:5])} have no marker gene; "
                         "list at least one gene for every reference cell type")
    lost = [t for t in types if not out[t]]
    if lost:
        ex = ", ".join(not_shared[lost[0]][:3])
        raise InputError(f"{what}: no marker of cell type(s) {', '.join(lost[:5])} is a gene shared by the bulk "
                         f"and the reference (e.g. {ex}); use gene symbols present in both")
    return {t: list(dict.fromkeys(g)) for t, g in out.items()}
