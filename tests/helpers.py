"""Small helpers shared by the unit tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """Import a script that is not a module (e.g. ``bin/qc.py``) so its ``main(argv)`` can be called."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pbmc_model_input() -> ad.AnnData:
    """scanpy's bundled pbmc68k_reduced as a model input: log-normalised CSR X, obs['celltype'] = bulk_labels."""
    pb = sc.datasets.pbmc68k_reduced()
    return ad.AnnData(
        X=sp.csr_matrix(pb.raw.X, dtype=np.float32),
        obs=pd.DataFrame({"celltype": pd.Categorical(pb.obs["bulk_labels"].astype(str))}, index=pb.obs_names.copy()),
        var=pd.DataFrame(index=pb.raw.var_names.copy()),
    )
