"""What the omicverse engine's stages share: loading and seeding omicverse, its device argument, a scratch folder, and the conversions between the pipeline's model input and omicverse's objects."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE
from b2s.errors import InputError


def load_omicverse() -> Any:
    """Import omicverse (slow) with a non-interactive matplotlib backend (it calls plt.show())."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import omicverse as ov

    return ov


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch's global RNG (omicverse uses all three)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def gpu_arg(device: str) -> int:
    """Translate ``--device auto|cpu|cuda`` into Bulk2Single's ``gpu`` argument (-1 = CPU)."""
    import torch

    if device == "cpu":
        return -1
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible to this task; use --device auto or --device cpu")
        return 0
    if device == "auto":
        return 0 if torch.cuda.is_available() else -1
    raise InputError(f"--device '{device}' is not supported; use auto, cpu or cuda")


@contextlib.contextmanager
def in_tempdir() -> Iterator[str]:
    """Run inside a scratch directory: omicverse's TAPE writes ``model.pth`` into the CWD."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="b2s_ov_") as tmp:
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(old)


def close_figures() -> None:
    """omicverse draws histograms while preparing fractions; free them."""
    import matplotlib.pyplot as plt

    plt.close("all")


def _dense_float32(X: Any) -> np.ndarray:
    if sp.issparse(X):
        return np.asarray(X.toarray(), dtype=np.float32)
    try:  # torch tensors
        import torch

        if isinstance(X, torch.Tensor):
            return X.detach().cpu().to(torch.float32).numpy()
    except ImportError:  # pragma: no cover - torch is pinned
        pass
    return np.asarray(X, dtype=np.float32)


def model_input_anndata(X: Any, labels: Any = None) -> Any:
    """A dense AnnData with ``obs['celltype']`` from an AnnData, array, sparse matrix or tensor."""
    import anndata as ad

    if isinstance(X, ad.AnnData):
        if labels is None and CELLTYPE in X.obs:
            labels = X.obs[CELLTYPE].astype(str).to_numpy()
        var_names = X.var_names.astype(str)
        obs_names = X.obs_names.astype(str)
        X = X.X
    else:
        var_names = None
        obs_names = None
    dense = _dense_float32(X)
    if dense.ndim != 2 or dense.shape[0] == 0 or dense.shape[1] == 0:
        raise InputError(f"model input: expected a non-empty cells x genes matrix, got shape {dense.shape}; check model_input.h5ad")
    if not np.isfinite(dense).all():
        raise InputError("model input: contains NaN or infinite values; rerun PREPROCESS on valid counts")
    n_cells, n_genes = dense.shape
    if labels is None:  # omicverse's trainer needs labels for its data set; it does not use them
        labels = np.full(n_cells, "all", dtype=object)
    obs = pd.DataFrame(
        {CELLTYPE: pd.Categorical(np.asarray(labels).astype(str))},
        index=pd.Index(obs_names if obs_names is not None else [f"cell{i}" for i in range(n_cells)], dtype=str),
    )
    var = pd.DataFrame(index=pd.Index(var_names if var_names is not None else [f"g{i}" for i in range(n_genes)], dtype=str))
    if not var.index.is_unique:
        raise InputError("model input: gene names are not unique; rerun PREPARE_INPUTS, which makes them unique")
    return ad.AnnData(X=dense, obs=obs, var=var)


def bulk2single_on_model_input(single: Any, gpu: int) -> Any:
    """A Bulk2Single whose prepared input is exactly ``single`` (already log-normalised).

    ``Bulk2Single`` wants bulk data and runs its own preprocessing; the stages here receive the
    pipeline's model input (PREPROCESS already matched genes and log-normalised), so the bulk
    side is a placeholder carrying only the gene names (``prepare_input`` uses nothing else from
    it), and ``single_preprocess_lazy`` is not called a second time.
    """
    ov = load_omicverse()
    genes = list(single.var_names)
    placeholder_bulk = pd.DataFrame({"placeholder": np.ones(len(genes))}, index=genes)
    model = ov.bulk2single.Bulk2Single(
        bulk_data=placeholder_bulk,
        single_data=single,
        celltype_key=CELLTYPE,
        bulk_group=None,
        max_single_cells=single.n_obs,  # the pipeline's reference is already subsampled (seeded)
        gpu=gpu,
    )
    model.bulk_seq_group = placeholder_bulk
    model.prepare_input()
    return model


def as_generated_contract(generated: Any, categories: Any, genes: Any) -> Any:
    """omicverse's generated AnnData -> CSR float32 X, categorical ``obs['celltype']``, model genes."""
    import anndata as ad

    X = sp.csr_matrix(np.asarray(generated.X, dtype=np.float32))
    X.eliminate_zeros()
    labels = pd.Categorical(generated.obs[CELLTYPE].astype(str), categories=list(categories))
    obs = pd.DataFrame({CELLTYPE: labels}, index=pd.Index(generated.obs_names.astype(str)))
    var = pd.DataFrame(index=pd.Index(np.asarray(genes, dtype=str), name=None))
    return ad.AnnData(X=X, obs=obs, var=var)


def minimal_bulk2single() -> Any:
    """A Bulk2Single built from one placeholder cell/gene, for methods that use no instance state."""
    import anndata as ad

    ov = load_omicverse()
    single = ad.AnnData(
        X=np.ones((1, 1), dtype=np.float32),
        obs=pd.DataFrame({CELLTYPE: ["placeholder"]}, index=["c0"]),
        var=pd.DataFrame(index=["g0"]),
    )
    return ov.bulk2single.Bulk2Single(
        bulk_data=pd.DataFrame({"placeholder": [1.0]}, index=["g0"]),
        single_data=single,
        celltype_key=CELLTYPE,
        gpu=-1,
    )


def version() -> str:
    """omicverse's version string (imports omicverse)."""
    return str(load_omicverse().__version__)
