"""Generation of synthetic cells from a trained beta-VAE, per cell type, vectorised and seeded.

For each cell type with a target count, the reference cells of that type are passed through the
full VAE (encode, sample ``z = mu + eps * exp(logvar / 2)``, decode), cycling over them in
reference order until the target is reached (as Bulk2Space: a target above the number of
reference cells reuses cells, each pass with fresh noise). Rows are gathered with one index array
and run in batches; the output stays sparse (the decoder's final ReLU gives exact zeros).
"""

from __future__ import annotations

import zlib

from collections.abc import Mapping

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from b2s.errors import InputError
from b2s.train import resolve_device
from b2s.vae import BetaVAE, load_weights, state_dict_shapes


def _as_model(state_dict_or_model: object, n_genes: int, hidden_size: int, device: torch.device) -> BetaVAE:
    """Accept a BetaVAE, any module with the same state dict (e.g. omicverse's VAE), a state dict or a path."""
    if isinstance(state_dict_or_model, BetaVAE):
        model = state_dict_or_model
    elif isinstance(state_dict_or_model, (str, bytes)) or hasattr(state_dict_or_model, "__fspath__"):
        model = load_weights(state_dict_or_model, n_genes, hidden_size, "cpu")
    else:
        state = (
            state_dict_or_model.state_dict()
            if isinstance(state_dict_or_model, torch.nn.Module)
            else state_dict_or_model
        )
        if not isinstance(state, Mapping) or "encoder.0.weight" not in state or "decoder.0.weight" not in state:
            raise TypeError("state_dict_or_model must be a BetaVAE, a VAE state dict or a path to one")
        file_genes, file_hidden = state_dict_shapes(state)
        if file_genes != n_genes:
            raise InputError(
                f"--vae_weights was trained on {file_genes} genes, model input has {n_genes}; "
                "retrain or pass the model input it was trained on"
            )
        model = BetaVAE(file_genes, file_hidden)
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    if model.n_genes != n_genes:
        raise InputError(
            f"--vae_weights was trained on {model.n_genes} genes, model input has {n_genes}; "
            "retrain or pass the model input it was trained on"
        )
    return model.to(device).eval()


def _clean_targets(targets: Mapping[str, int], available: pd.Index) -> dict[str, int]:
    """Validate ``{celltype: n_cells}`` against the model input's cell types."""
    out: dict[str, int] = {}
    for name, n in targets.items():
        n_int = int(n)
        if n_int != n or n_int < 0:
            raise InputError(f"cell target for '{name}' is {n}; n_cells must be a whole number >= 0")
        out[str(name)] = n_int
    missing = [t for t in out if t not in set(available)]
    if missing:
        raise InputError(
            f"cell types {missing} of the targets are not in the model input obs['celltype'] "
            f"(found: {', '.join(map(str, available))}); use targets and model input from the same run"
        )
    return out


def group_seed(seed: int, group: str) -> int:
    """The generation seed of one bulk group: ``seed`` offset by a stable hash of the group name.

    Groups get independent sampling noise (with one shared seed, two groups with the same target
    for a type would get the very same cells), and a group's cells do not depend on which other
    groups are in the run.
    """
    return (int(seed) + zlib.crc32(str(group).encode("utf-8"))) % 2**32  # numpy seeds must be < 2**32


def generate_cells(
    state_dict_or_model: object,
    model_input: anndata.AnnData,
    targets: Mapping[str, int],
    hidden_size: int = 256,
    seed: int = 42,
    device: str = "auto",
    batch_size: int = 4096,
) -> anndata.AnnData:
    """Generate ``targets[celltype]`` cells of each type from the VAE.

    Args:
        state_dict_or_model: a BetaVAE, an omicverse VAE, a state dict, or a path to ``vae.pth``.
        model_input: reference cells x model genes (log-normalised, ``obs['celltype']``).
        targets: cell type -> number of cells to generate (types with 0 are skipped).
        hidden_size: latent size the weights were trained with (used when loading a path).
        seed: seeds the sampling noise; same seed, data and device -> identical output.
        device: ``auto|cpu|cuda``.
        batch_size: cells per forward pass (memory only; results depend on it only through
            the order noise is drawn).

    Returns:
        AnnData with X CSR float32 (cells x model genes), ``obs['celltype']`` categorical (in
        the order of ``targets``), obs_names ``cell_<i>``, var_names = model genes.
    """
    if "celltype" not in model_input.obs:
        raise InputError("model input has no obs['celltype']; pass the model_input.h5ad written by PREPROCESS")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    dev = resolve_device(device)
    n_genes = int(model_input.n_vars)
    model = _as_model(state_dict_or_model, n_genes, hidden_size, dev)

    labels = model_input.obs["celltype"].astype(str).to_numpy()
    available = pd.Index(pd.unique(labels))
    wanted = _clean_targets(targets, available)

    # One index array over reference rows: each type's cells repeated cyclically to its target.
    parts, names = [], []
    for celltype, n in wanted.items():
        if n == 0:
            continue
        rows = np.flatnonzero(labels == celltype)
        parts.append(np.resize(rows, n))
        names.append(np.full(n, celltype, dtype=object))
    index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    celltypes = np.concatenate(names) if names else np.zeros(0, dtype=object)

    X_ref = model_input.X
    X_ref = sp.csr_matrix(X_ref) if sp.issparse(X_ref) else np.asarray(X_ref)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    blocks = []
    print(f"generating {len(index)} cells of {len(parts)} cell types on {dev}", flush=True)
    with torch.inference_mode():
        for start in range(0, len(index), batch_size):
            rows = index[start:start + batch_size]
            xb = X_ref[rows]
            xb = xb.toarray() if sp.issparse(xb) else xb
            x = torch.as_tensor(np.asarray(xb, dtype=np.float32), device=dev)
            x_hat, _, _ = model(x, gen)
            blocks.append(sp.csr_matrix(x_hat.float().cpu().numpy()))
    X = sp.vstack(blocks, format="csr", dtype=np.float32) if blocks else sp.csr_matrix((0, n_genes), dtype=np.float32)

    order = [t for t, n in wanted.items() if n > 0]
    obs = pd.DataFrame(
        {"celltype": pd.Categorical(celltypes, categories=order)},
        index=pd.Index([f"cell_{i}" for i in range(len(index))]),
    )
    var = pd.DataFrame(index=model_input.var_names.copy())
    return anndata.AnnData(X=X, obs=obs, var=var)
