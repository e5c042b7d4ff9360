"""Partial reads of a reference h5ad: only the selected cells' rows of X (CSR, CSC or dense) and of the obs index, in bounded blocks (h5py); anything else is read whole by anndata."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import COUNTS_LAYER

#: Largest run of matrix entries (or dense rows x genes) read from the h5ad at once.
_READ_BLOCK = 1 << 23


#: Gaps between selected CSR rows shorter than this (in entries) are read through, not seeked.
_READ_GAP = 1 << 16


#: Cell names read at once when only the subsample's names are kept.
_NAME_BLOCK = 1 << 16


class Unsupported(Exception):
    """An h5ad layout the partial reader does not know; the whole file is read instead."""


def _h5_index_elem(group):
    """The index element of an anndata dataframe group (obs/var), not read."""
    if not hasattr(group, "attrs") or "_index" not in group.attrs or not hasattr(group, "keys"):
        raise Unsupported("dataframe without '_index'")
    return group[group.attrs["_index"]]


def _h5_index(group) -> pd.Index:
    """The index of an anndata dataframe group (obs/var) without reading its columns."""
    from anndata.io import read_elem

    return pd.Index(np.asarray(read_elem(_h5_index_elem(group))).astype(str))


def _h5_index_rows(elem, rows: np.ndarray) -> pd.Index:
    """Entries ``rows`` (sorted) of an index element: a string dataset is read in blocks of
    ``_NAME_BLOCK`` names keeping only the selected ones, so an atlas's million cell names are
    never held as Python strings; other encodings are read whole."""
    import h5py
    from anndata.io import read_elem

    if not (isinstance(elem, h5py.Dataset) and elem.ndim == 1 and h5py.check_string_dtype(elem.dtype)):
        return pd.Index(np.asarray(read_elem(elem)).astype(str)[rows])
    strings = elem.asstr()
    parts = []
    bounds = np.searchsorted(rows, np.arange(0, elem.shape[0] + _NAME_BLOCK, _NAME_BLOCK))
    for b, lo in enumerate(range(0, elem.shape[0], _NAME_BLOCK)):
        sel = rows[bounds[b]:bounds[b + 1]]
        if sel.size:
            parts.append(np.asarray(strings[lo:min(lo + _NAME_BLOCK, elem.shape[0])], dtype=object)[sel - lo])
    names = np.concatenate(parts) if parts else np.zeros(0, dtype=object)
    return pd.Index(names.astype(str))


def _csr_rows(elem, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted, unique) of an on-disk CSR matrix, reading only their entries."""
    indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
    data_ds, ind_ds = elem["data"], elem["indices"]
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out_data = np.empty(int(lengths.sum()), dtype=np.float32)
    out_ind = np.empty(out_data.size, dtype=np.int64)
    # Spans of selected rows close enough to read in one go (bounded size).
    first = 0
    pos = 0
    n = len(rows)
    while first < n:
        last = first
        while (last + 1 < n and starts[last + 1] - ends[last] <= _READ_GAP
               and ends[last + 1] - starts[first] <= _READ_BLOCK):
            last += 1
        lo, hi = int(starts[first]), int(ends[last])
        if hi > lo:
            lens = lengths[first:last + 1]
            total = int(lens.sum())
            # positions of the selected rows' entries inside the span just read
            take = (np.repeat(starts[first:last + 1] - lo - np.cumsum(lens) + lens, lens)
                    + np.arange(total))
            out_data[pos:pos + total] = np.asarray(data_ds[lo:hi])[take]
            out_ind[pos:pos + total] = np.asarray(ind_ds[lo:hi])[take]
            pos += total
        first = last + 1
    new_indptr = np.concatenate([[0], np.cumsum(lengths)])
    shape = (len(rows), int(elem.attrs["shape"][1]))
    return sp.csr_matrix((out_data, out_ind, new_indptr), shape=shape)


def _csc_rows(elem, rows: np.ndarray, n_obs: int) -> sp.csr_matrix:
    """Rows ``rows`` of an on-disk CSC matrix: one streaming pass over the entries in blocks.

    CSC stores cells inside columns, so every entry is scanned once, but only the selected
    cells' entries are kept: memory is set by the subsample and the block size.
    """
    indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
    n_cols = indptr.size - 1
    where = np.full(n_obs, -1, dtype=np.int64)
    where[rows] = np.arange(rows.size)
    keep_r, keep_c, keep_v = [], [], []
    nnz = int(indptr[-1])
    for lo in range(0, nnz, _READ_BLOCK):
        hi = min(lo + _READ_BLOCK, nnz)
        r = where[np.asarray(elem["indices"][lo:hi], dtype=np.int64)]
        sel = np.flatnonzero(r >= 0)
        if sel.size:
            keep_r.append(r[sel])
            keep_c.append(np.searchsorted(indptr, lo + sel, side="right") - 1)
            keep_v.append(np.asarray(elem["data"][lo:hi])[sel].astype(np.float32))
    def cat(parts: list[np.ndarray], dt: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dt)

    coo = sp.coo_matrix((cat(keep_v, np.float32), (cat(keep_r, np.int64), cat(keep_c, np.int64))),
                        shape=(rows.size, n_cols))
    return coo.tocsr()


def _dense_rows(ds, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` of an on-disk dense matrix, read in bounded row blocks, kept sparse."""
    per = max(1, _READ_BLOCK // max(1, ds.shape[1]))
    parts = [sp.csr_matrix(np.asarray(ds[rows[i:i + per]], dtype=np.float32))
             for i in range(0, rows.size, per)]
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, ds.shape[1]),
                                                                       dtype=np.float32)


def _h5_matrix_reader(elem, n_obs: int):
    """A function ``rows -> CSR float32`` reading only those rows of an h5ad matrix element."""
    import h5py

    if isinstance(elem, h5py.Dataset):
        if elem.ndim != 2:
            raise Unsupported(f"{elem.ndim}-d dataset")
        return lambda rows: _dense_rows(elem, rows)
    enc = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    if enc in ("csr_matrix", "csr"):
        return lambda rows: _csr_rows(elem, rows)
    if enc in ("csc_matrix", "csc"):
        return lambda rows: _csc_rows(elem, rows, n_obs)
    raise Unsupported(f"matrix encoding '{enc}'")


class H5Reference:
    """The parts of a reference h5ad the pipeline uses, read on demand with h5py.

    Labels and names are read first; matrix rows only for the chosen cells (CSR: only their
    entries; CSC: one streaming pass; dense: their rows). Unknown layouts raise Unsupported.
    """

    def __init__(self, f) -> None:
        import h5py

        if not isinstance(f.get("obs"), h5py.Group) or not isinstance(f.get("var"), h5py.Group):
            raise Unsupported("obs/var are not anndata dataframes")
        self.f = f
        self._obs_index = _h5_index_elem(f["obs"])
        if not isinstance(self._obs_index, h5py.Dataset) or self._obs_index.ndim != 1:
            raise Unsupported("obs index is not a 1-d dataset")
        self.var_names = _h5_index(f["var"])
        self.n_obs, self.n_vars = int(self._obs_index.shape[0]), len(self.var_names)
        order = f["obs"].attrs.get("column-order", [])
        self.columns = [str(c) for c in np.atleast_1d(order)] if len(order) else []
        # Matrix layouts are checked now (attributes only), so an unknown one falls back early.
        self._candidates = []
        if "layers" in f and COUNTS_LAYER in f["layers"]:
            self._candidates.append(("layers['counts']",
                                     _h5_matrix_reader(f["layers"][COUNTS_LAYER], self.n_obs),
                                     self.var_names))
        if "raw" in f and "X" in f["raw"]:
            raw_var = _h5_index(f["raw"]["var"]) if "var" in f["raw"] else self.var_names
            self._candidates.append((".raw.X", _h5_matrix_reader(f["raw"]["X"], self.n_obs),
                                     raw_var))
        self._candidates.append(("X", _h5_matrix_reader(f["X"], self.n_obs) if "X" in f else None,
                                 self.var_names))

    def labels(self, key: str) -> pd.Series:
        from anndata.io import read_elem

        return pd.Series(read_elem(self.f["obs"][key]))

    def obs_names_at(self, rows: np.ndarray) -> pd.Index:
        """Names of the cells ``rows`` (sorted), read for those cells only."""
        return _h5_index_rows(self._obs_index, rows)

    def candidates(self) -> list[tuple[str, Any, Any]]:
        return self._candidates


class MemoryReference:
    """The same interface over an AnnData read whole (layouts the partial reader cannot read)."""

    def __init__(self, adata: ad.AnnData) -> None:
        self.adata = adata
        self.var_names = adata.var_names
        self.n_obs, self.n_vars = adata.n_obs, adata.n_vars
        self.columns = list(adata.obs.columns)

    def labels(self, key: str) -> pd.Series:
        return self.adata.obs[key].reset_index(drop=True)

    def obs_names_at(self, rows: np.ndarray) -> pd.Index:
        return pd.Index(np.asarray(self.adata.obs_names)[rows].astype(str))

    def candidates(self) -> list[tuple[str, Any, Any]]:
        a, out = self.adata, []
        if COUNTS_LAYER in a.layers:
            out.append(("layers['counts']", lambda rows, m=a.layers[COUNTS_LAYER]: m[rows], a.var_names))
        if a.raw is not None:
            out.append((".raw.X", lambda rows, m=a.raw.X: m[rows], a.raw.var_names))
        out.append(("X", None if a.X is None else (lambda rows, m=a.X: m[rows]), a.var_names))
        return out
