#!/usr/bin/env python3
"""Print a JSON summary of an .h5ad file for nf-test assertions (nf-test cannot read HDF5).

Usage: h5ad_summary.py FILE.h5ad  ->  {"n_obs", "n_vars", "obs_columns", "obsm", "uns", "celltypes",
"obs_names", "var_names", "x": {"min", "max", "sparse", "dtype"}}
"""

from __future__ import annotations

import json
import sys

import anndata as ad
import numpy as np
import scipy.sparse as sp


def summary(path: str) -> dict:
    """Shape, names, per-type counts and X range of the h5ad at ``path``."""
    a = ad.read_h5ad(path)
    x = a.X
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    finite = bool(np.isfinite(values).all()) if values.size else True
    out = {
        "n_obs": int(a.n_obs),
        "n_vars": int(a.n_vars),
        "obs_columns": [str(c) for c in a.obs.columns],
        "obsm": {k: list(map(int, np.shape(v))) for k, v in a.obsm.items()},
        "uns": sorted(map(str, a.uns.keys())),
        "obs_names": [str(n) for n in a.obs_names],
        "var_names": [str(n) for n in a.var_names],
        "x": {
            "sparse": bool(sp.issparse(x)),
            "dtype": str(x.dtype),
            "min": float(values.min()) if values.size else 0.0,
            "max": float(values.max()) if values.size else 0.0,
            "finite": finite,
        },
    }
    for key in ("celltype", "leiden"):
        if key in a.obs:
            counts = a.obs[key].astype(str).value_counts()
            out[f"{key}_counts"] = {str(k): int(v) for k, v in counts.items()}
    return out


if __name__ == "__main__":
    print(json.dumps(summary(sys.argv[1])))
