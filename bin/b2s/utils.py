"""Small helpers shared by several stages."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def indicator(codes: np.ndarray, n_types: int) -> sparse.csr_matrix:
    """Sparse (types x cells) 0/1 indicator of integer codes (code < 0: in no type);
    ``indicator @ X`` gives per-type sums without densifying X."""
    codes = np.asarray(codes)
    ok = codes >= 0
    return sparse.csr_matrix((np.ones(int(ok.sum())), (codes[ok], np.flatnonzero(ok))),
                             shape=(n_types, len(codes)))
