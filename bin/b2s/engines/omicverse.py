"""The pipeline's stages run through omicverse 2.3.2's public Bulk2Single API (``--engine omicverse``).

For users who need the seed tool's exact behaviour. Each function mirrors the native stage
function of the same name and returns data in the pipeline's contract, but the science is
omicverse's own calls (``Bulk2Single``, ``predicted_fraction``, ``prepare_input``, ``train``,
``load``, ``generate``, ``filtered``). Behaviour of omicverse that this engine deliberately keeps
(it reproduces the seed, it does not fix it):

- fractions come from Scaden/TAPE trained on pseudo-bulks simulated from ONE summed count
  profile per cell type (not from single cells);
- the VAE's forward pass, used for training and generation, samples z = eps + mu*exp(logvar/2);
- ``filtered`` runs HVG/scale/PCA(100)/neighbors/leiden with scanpy's fixed default random
  states and returns the scaled HVG matrix (converted here, see :func:`filter_cells`);
- ``Bulk2Single`` densifies the reference it is given.

omicverse seeds none of its own random steps (reference subsampling, Dirichlet fractions,
mini-batch order, latent noise, generation order), so every function here seeds python
``random``, numpy's global RNG and torch's global RNG before each omicverse call; with the same
seed on the same CPU the outputs are identical.

omicverse is imported lazily inside the functions: importing it takes 10-30 s.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from b2s._constants import CELLTYPE, SAMPLE, VAE_WEIGHTS_FILE
from b2s.engines.omicverse_support import (
    as_generated_contract,
    bulk2single_on_model_input,
    close_figures,
    gpu_arg,
    in_tempdir,
    load_omicverse,
    minimal_bulk2single,
    model_input_anndata,
    seed_everything,
    version,
)
from b2s.errors import InputError

#: fraction backends omicverse 2.3.2's ``predicted_fraction`` offers
OMICVERSE_METHODS = ("scaden", "tape")
#: hyper-parameters omicverse's trainer hard-codes (not settable through its API)
OMICVERSE_FIXED = {"beta": 4.0, "weight_decay": 5e-4}


# ----------------------------------------------------------------------------- helpers


# ----------------------------------------------------------------------------- stages


def estimate_sample_fractions(
    bulk: pd.DataFrame,
    reference: Any,
    method: str = "scaden",
    seed: int = 42,
    **kw: Any,
) -> pd.DataFrame:
    """Cell-type fractions per bulk sample with omicverse's ``Bulk2Single.predicted_fraction``.

    Args:
        bulk: genes x samples raw counts (index = gene symbols).
        reference: AnnData of raw counts with ``obs['celltype']`` (already subsampled by
            PREPARE_INPUTS, so omicverse's own unseeded subsampling is switched off).
        method: ``'scaden'`` (omicverse's default) or ``'tape'``.
        seed: seeds python/numpy/torch global RNGs before the call (and TAPE's own ``seed``).
        **kw: passed to ``predicted_fraction`` (e.g. ``epochs``, ``pseudobulk_size``, ``scale_size``).

    Returns:
        DataFrame samples x cell types (reference category order). omicverse's output is
        clipped at 0 and renormalised so each row sums to 1, as the contract requires; the
        omicverse target cell numbers for the whole cohort are kept in
        ``.attrs['omicverse_cell_target_num']``.
    """
    if method not in OMICVERSE_METHODS:
        raise InputError(
            f"--method '{method}' is not available with --engine omicverse (choices: {', '.join(OMICVERSE_METHODS)}); "
            "use one of them or --engine native"
        )
    if CELLTYPE not in reference.obs:
        raise InputError("reference.h5ad: obs['celltype'] is missing; run PREPARE_INPUTS, which writes it")
    if bulk.shape[1] == 0 or bulk.shape[0] == 0:
        raise InputError("bulk counts: the matrix is empty; check bulk_counts.tsv")
    shared = bulk.index.intersection(reference.var_names)
    if len(shared) == 0:
        raise InputError("bulk counts: no gene is shared with reference.h5ad; map bulk gene IDs to symbols (--gene_map)")
    ov = load_omicverse()
    single = reference.copy()  # Bulk2Single changes var names and slices in place
    single.obs[CELLTYPE] = single.obs[CELLTYPE].astype(str)
    categories = (
        list(reference.obs[CELLTYPE].cat.categories)
        if isinstance(reference.obs[CELLTYPE].dtype, pd.CategoricalDtype)
        else sorted(single.obs[CELLTYPE].unique())
    )
    seed_everything(seed)
    model = ov.bulk2single.Bulk2Single(
        bulk_data=bulk.astype(np.float64),
        single_data=single,
        celltype_key=CELLTYPE,
        bulk_group=None,
        max_single_cells=single.n_obs,
        gpu=-1 if kw.pop("device", "auto") == "cpu" else 0,
    )
    if method == "tape":
        kw.setdefault("seed", seed)
    with in_tempdir():
        seed_everything(seed)
        pred = model.predicted_fraction(method=method, **kw)
    close_figures()
    pred = pd.DataFrame(pred).astype(np.float64)
    pred.index = pred.index.astype(str)
    pred.columns = pred.columns.astype(str)
    pred = pred.reindex(columns=[c for c in categories if c in pred.columns] + [c for c in pred.columns if c not in categories])
    pred = pred.clip(lower=0.0)
    totals = pred.sum(axis=1).replace(0.0, np.nan)
    pred = pred.div(totals, axis=0).fillna(1.0 / pred.shape[1])
    pred.index.name = SAMPLE
    pred.attrs["omicverse_cell_target_num"] = {str(k): int(v) for k, v in model.cell_target_num.items()}
    return pred


def train_vae(X: Any, config: Any) -> Any:
    """Train the beta-VAE with omicverse's trainer, through the public ``Bulk2Single.train``.

    Why ``Bulk2Single.train`` and not the module-level ``bulk2single._vae.train_vae``: the latter
    lives in a private module; ``train`` is the seed's call. The object is built the seed's way
    (constructor, ``prepare_input``) on the pipeline's model input, with ``cell_target_num``
    set to 1 per type because ``train`` checks it exists (it does not use it).

    Args:
        X: model input (AnnData with ``obs['celltype']``, or a cells x genes array/sparse/tensor),
            already log-normalised.
        config: ``b2s.model.config.TrainConfig``. omicverse fixes beta=4 and weight_decay=5e-4, has no
            checkpoints, mixed precision or progress interval: ``checkpoint_*``, ``amp`` and
            ``log_every`` are ignored; other beta/weight_decay values are refused.

    Returns:
        ``b2s.model.config.TrainResult``: the best (lowest summed epoch loss) weights; history has
        omicverse's per-epoch summed loss, ``recon``/``kl`` are NaN (omicverse records only the
        total); epochs are numbered from 1.
    """
    from b2s.model.config import TrainResult

    for name, fixed in OMICVERSE_FIXED.items():
        value = getattr(config, name, fixed)
        if value is not None and not np.isclose(float(value), fixed):
            raise InputError(
                f"--{name} {value}: omicverse's trainer fixes {name}={fixed:g}; use that value or --engine native"
            )

    gpu = gpu_arg(getattr(config, "device", "auto"))
    single = model_input_anndata(X)
    model = bulk2single_on_model_input(single, gpu)
    model.cell_target_num = {str(ct): 1 for ct in single.obs[CELLTYPE].unique()}
    if getattr(config, "checkpoint_path", None):
        print("omicverse engine: the omicverse trainer has no checkpoints; training starts from scratch", flush=True)
    seed_everything(int(config.seed))
    t0 = time.perf_counter()
    net = model.train(
        batch_size=int(config.batch_size),
        learning_rate=float(config.learning_rate),
        hidden_size=int(config.hidden_size),
        epoch_num=int(config.epoch_num),
        patience=int(config.patience),
        save=False,
    )
    seconds = time.perf_counter() - t0
    losses = np.asarray(model.history, dtype=np.float64)
    history = pd.DataFrame(
        {"epoch": np.arange(1, len(losses) + 1), "loss": losses, "recon": np.nan, "kl": np.nan}
    )
    best = int(np.argmin(losses))  # omicverse keeps the first epoch reaching the minimum
    if getattr(config, "history_path", None):
        history.to_csv(config.history_path, index=False)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return TrainResult(
        state_dict=state,
        history=history,
        best_epoch=best + 1,
        best_loss=float(losses[best]),
        epochs_run=int(len(losses)),
        device=str(model.used_device),
        seconds=float(seconds),
        resumed_from=None,
    )


def generate_cells(
    state_dict_or_model: Any,
    model_input: Any,
    targets: Mapping[str, int],
    hidden_size: int = 256,
    seed: int = 42,
    device: str = "auto",
    batch_size: int = 4096,
) -> Any:
    """Generate cells with omicverse's ``Bulk2Single.load`` + ``generate``.

    Args:
        state_dict_or_model: a ``.pth`` path, a state dict or a torch module with the VAE weights.
        model_input: AnnData (log-normalised, ``obs['celltype']``), the training input.
        targets: cell type -> number of cells; must name exactly the types of ``model_input``
            (omicverse refuses anything else).
        hidden_size: latent size the weights were trained with.
        seed: seeds the latent noise and omicverse's generation order.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: ignored; omicverse generates in fixed batches of 300.

    Returns:
        AnnData with X log-normalised (CSR float32, the decoder output), ``obs['celltype']``
        categorical, var = model genes. omicverse returns a dense matrix and names the label
        column after ``celltype_key``; both are converted to the contract.
    """
    import torch

    gpu = gpu_arg(device)
    single = model_input_anndata(model_input)
    types = set(single.obs[CELLTYPE].astype(str))
    wanted = {str(k): int(v) for k, v in targets.items()}
    missing = sorted(types - set(wanted))
    unknown = sorted(set(wanted) - types)
    if missing or unknown:
        raise InputError(
            "cell_targets.csv: cell types must match model_input.h5ad for --engine omicverse "
            f"(missing: {missing or 'none'}; not in the model input: {unknown or 'none'}); rerun ESTIMATE_FRACTIONS on the same reference"
        )
    if any(v < 0 for v in wanted.values()):
        raise InputError("cell_targets.csv: n_cells must be >= 0; rerun ESTIMATE_FRACTIONS")
    model = bulk2single_on_model_input(single, gpu)
    model.cell_target_num = wanted
    with tempfile.TemporaryDirectory(prefix="b2s_ov_") as tmp:
        if isinstance(state_dict_or_model, (str, os.PathLike)):
            weights = str(state_dict_or_model)
        else:
            state = state_dict_or_model.state_dict() if isinstance(state_dict_or_model, torch.nn.Module) else state_dict_or_model
            weights = os.path.join(tmp, VAE_WEIGHTS_FILE)
            torch.save(dict(state), weights)
        try:
            model.load(weights, hidden_size=int(hidden_size))
        except RuntimeError as err:
            raise InputError(
                f"VAE weights: they do not fit a model with {single.n_vars} genes and --hidden_size {hidden_size} "
                f"({str(err).splitlines()[0]}); use weights trained on this model input"
            ) from None
    seed_everything(seed)
    with torch.no_grad():
        generated = model.generate()
    return as_generated_contract(generated, categories=single.obs[CELLTYPE].cat.categories, genes=single.var_names)


def filter_cells(adata: Any, leiden_size: int = 25, seed: int = 42) -> Any:
    """Drop small leiden clusters with omicverse's ``Bulk2Single.filtered``.

    omicverse's ``filtered`` returns the kept cells restricted to highly variable genes and
    SCALED (z-scores clipped at 10). The contract keeps all genes, log-normalised, so the
    result here is the input's X for the kept cells, with omicverse's ``obsm['X_pca']``,
    ``obs['leiden']`` and ``var['highly_variable']``. ``filtered`` does not take a random state:
    scanpy's defaults (random_state=0) make it deterministic; ``seed`` only seeds the global
    RNGs. ``filtered`` uses no state of its Bulk2Single, so it is called on a minimal one.
    Input is not modified.

    If fewer than 101 cells or highly variable genes exist, omicverse's fixed 100 PCA components
    cannot be computed; the call is repeated with as many components as the data allow.
    """
    import anndata as ad

    if adata.n_obs == 0:
        raise InputError("generated h5ad: it holds no cells; check cell_targets.csv (n_cells) and rerun GENERATE")
    work = adata.copy()
    work.obs["_b2s_pos"] = np.arange(work.n_obs)
    work.obs[CELLTYPE] = work.obs[CELLTYPE].astype(str) if CELLTYPE in work.obs else "unknown"
    model = minimal_bulk2single()
    seed_everything(seed)
    try:
        filtered = model.filtered(work.copy(), leiden_size=int(leiden_size))
    except ValueError as err:
        if "n_components" not in str(err) and "n_comps" not in str(err):
            raise
        n_comps = max(2, min(work.n_obs, work.n_vars) - 1)
        import scanpy as sc

        probe = work.copy()
        sc.pp.highly_variable_genes(probe, min_mean=0.0125, max_mean=3, min_disp=0.5)
        n_comps = max(1, min(n_comps, int(probe.var["highly_variable"].sum()) - 1))
        print(f"omicverse engine: too few cells/genes for 100 PCs; using n_comps={n_comps}", flush=True)
        seed_everything(seed)
        filtered = model.filtered(work.copy(), leiden_size=int(leiden_size), n_comps=n_comps)
    pos = filtered.obs["_b2s_pos"].to_numpy()
    X = adata.X[pos]
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    obs = adata.obs.iloc[pos].copy()
    obs["leiden"] = pd.Categorical(filtered.obs["leiden"].astype(str))
    var = adata.var.copy()
    hvg = pd.Series(False, index=adata.var_names)
    hvg.loc[filtered.var_names] = True
    var["highly_variable"] = hvg.to_numpy()
    out = ad.AnnData(X=X, obs=obs, var=var)
    out.obsm["X_pca"] = np.asarray(filtered.obsm["X_pca"], dtype=np.float32)
    if "pca" in filtered.uns:
        out.uns["pca"] = {k: np.asarray(v) for k, v in filtered.uns["pca"].items() if k in ("variance", "variance_ratio")}
    return out


__all__ = [
    "OMICVERSE_METHODS",
    "estimate_sample_fractions",
    "filter_cells",
    "generate_cells",
    "seed_everything",
    "train_vae",
    "version",
]
