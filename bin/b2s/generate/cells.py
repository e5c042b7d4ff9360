"""Generation of synthetic cells from a trained beta-VAE, per cell type, vectorised and seeded.

For each cell type with a target count, the reference cells of that type are passed through the
VAE (encode, take the latent code, decode), cycling over them in reference order until the target
is reached (as Bulk2Space). Rows are gathered with one index array and run in batches.

Two choices beyond the seed, both picked on the realism benchmark (benchmarks/realism.py,
benchmarks/README.md "Realism"):

- ``decode``: ``sample`` decodes a posterior draw ``z = mu + eps * std`` (the seed), ``mean``
  decodes the posterior mean;
- ``counts``: the decoder predicts a smooth log value per gene (expm1 of an average log is far
  below the average count, and nothing is exactly zero where real cells are). With ``nb`` (or
  ``poisson``) the decoded values become calibrated rates and integer counts are drawn:
  rate = profile(decoded) * c[type, gene] (profile: expm1, each cell rescaled to sum to 1e4, as
  real normalised cells do), where c makes the mean rate of the decoded reference
  cells of each type equal to their real mean normalised count (a gene the decoder never
  expresses in a type gets that mean as a flat rate); each generated cell takes the
  library size of the reference cell it was encoded from; counts ~ NB(library * rate / 1e4,
  per-gene dispersion estimated from the reference counts within types) (gamma-Poisson). The
  counts go to ``layers['counts']`` and X = log1p(counts / library * 1e4), the model input's scale.
  ``none`` keeps the decoder output as X (the seed).

Why (benchmarks/README.md, "Realism of generated cells on a real full-transcriptome
reference"): against held-out real cells, the posterior mean with calibrated NB counts types
cells about as well as real cells do, where decoder output as X (the seed) types few of them;
the per-type calibration carries most of the type identity. Rescaling each decoded cell to a
profile before calibrating brings the library sizes of the worst type close to real. A residual
NB dispersion given each reference cell's decoded mean, per-type dispersions and
Sinkhorn-balanced rates were tried there and gave no gain.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from b2s._constants import CELLTYPE, COUNTS_LAYER
from b2s.errors import InputError
from b2s.generate.rates import (
    CALIBRATE_CHOICES,
    COUNTS_CHOICES,
    DECODE_CHOICES,
    DEFAULTS,
    DISPERSION_CHOICES,
    RateModel,
    as_model,
    decode_rows,
    profile,
    rate_model,
    sample_counts,
    shift_multipliers,
)
from b2s.model.device import resolve_device
from b2s.model.vae import REPARAM_CHOICES
from b2s.preprocess import TARGET_SUM


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
    batch_size: int = DEFAULTS["batch_size"],
    decode: str = DEFAULTS["decode"],
    counts: str = DEFAULTS["counts"],
    reparam: str | None = None,
    calibrate: str = DEFAULTS["calibrate"],
    shift: pd.DataFrame | None = None,
    rates: RateModel | None = None,
    dispersion: str = DEFAULTS["dispersion"],
) -> anndata.AnnData:
    """Generate ``targets[celltype]`` cells of each type from the VAE.

    Args:
        state_dict_or_model: a BetaVAE, an omicverse VAE, a state dict, or a path to ``vae.pth``.
        model_input: reference cells x model genes (log-normalised, ``obs['celltype']``; for
            ``counts`` other than ``none`` also ``layers['counts']`` and ``obs['total_counts']``,
            as PREPROCESS writes them).
        targets: cell type -> number of cells to generate (types with 0 are skipped).
        hidden_size: latent size the weights were trained with (used when loading a path).
        seed: seeds the latent noise and the count sampling; same seed, data and device -> identical output.
        device: ``auto|cpu|cuda``.
        batch_size: cells per forward pass (memory only; results depend on it only through
            the order noise is drawn).
        decode: ``sample`` (posterior draw) or ``mean`` (posterior mean), see the module docstring.
        counts: ``nb``, ``poisson`` or ``none`` (X = decoder output), see the module docstring.
        reparam: sampling form of the weights (``standard`` | ``omicverse``); None keeps the model's.
        calibrate: rate calibration per ``type`` and gene, or per ``gene`` over all reference cells.
        shift: optional log2 fold changes, cell types (index) x model genes (columns), from
            :func:`b2s.generate.bulkshift.estimate_shifts`: each generated cell's rates (decoded values
            with ``counts none``) are multiplied by ``2 ** shift`` of its type before counts are
            drawn, so a gene at rate 0 stays 0. Types or genes not in it are not shifted.

    Returns:
        AnnData with X CSR float32 (cells x model genes), ``obs['celltype']`` categorical (in
        the order of ``targets``), obs_names ``cell_<i>``, var_names = model genes; with counts,
        ``layers['counts']`` (CSR float32 integers) and ``obs['total_counts']`` (the library the
        counts were drawn for, that of the source reference cell).
    """
    if CELLTYPE not in model_input.obs:
        raise InputError("model input has no obs['celltype']; pass the model_input.h5ad written by PREPROCESS")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if decode not in DECODE_CHOICES:
        raise InputError(f"--decode {decode} is not one of {', '.join(DECODE_CHOICES)}; pass --decode mean")
    if counts not in COUNTS_CHOICES:
        raise InputError(f"--counts {counts} is not one of {', '.join(COUNTS_CHOICES)}; pass --counts nb")
    if calibrate not in CALIBRATE_CHOICES:
        raise InputError(f"--calibrate {calibrate} is not one of {', '.join(CALIBRATE_CHOICES)}; pass --calibrate type")
    if dispersion not in DISPERSION_CHOICES:
        raise InputError(f"--dispersion {dispersion} is not one of {', '.join(DISPERSION_CHOICES)}; pass --dispersion residual")
    if reparam is not None and reparam not in REPARAM_CHOICES:
        raise InputError(f"--reparam {reparam} is not one of {', '.join(REPARAM_CHOICES)}; pass --reparam standard")
    dev = resolve_device(device)
    n_genes = int(model_input.n_vars)
    model = as_model(state_dict_or_model, n_genes, hidden_size, dev, reparam)

    labels = model_input.obs[CELLTYPE].astype(str).to_numpy()
    available = pd.Index(pd.unique(labels))
    wanted = _clean_targets(targets, available)
    order = [t for t, n in wanted.items() if n > 0]

    if counts != "none" and COUNTS_LAYER not in model_input.layers:
        print("model input has no layers['counts'] (written by PREPROCESS since the realism release): "
              "generating log values only (--counts none)", flush=True)
        counts = "none"

    mult = shift_multipliers(shift, list(available), model_input.var_names)

    # One index array over reference rows: each type's cells repeated cyclically to its target.
    parts, names = [], []
    for celltype in order:
        rows = np.flatnonzero(labels == celltype)
        parts.append(np.resize(rows, wanted[celltype]))
        names.append(np.full(wanted[celltype], celltype, dtype=object))
    index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    celltypes = np.concatenate(names) if names else np.zeros(0, dtype=object)

    X_ref = model_input.X
    X_ref = sp.csr_matrix(X_ref) if sp.issparse(X_ref) else np.asarray(X_ref)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    print(f"generating {len(index)} cells of {len(parts)} cell types on {dev} "
          f"(decode {decode}, counts {counts})", flush=True)
    blocks, count_blocks = [], []
    with torch.inference_mode():
        if counts == "none":
            type_of = pd.Categorical(celltypes, categories=list(available)).codes
            pos = 0
            for block in decode_rows(model, X_ref, index, decode, gen, dev, batch_size):
                if mult is not None:
                    block = np.log1p(np.expm1(block) * mult[type_of[pos:pos + len(block)]]).astype(np.float32)
                pos += len(block)
                blocks.append(sp.csr_matrix(block))
        else:
            wanted_settings = (counts, calibrate, decode, dispersion)
            if rates is not None and rates.settings != wanted_settings:
                raise ValueError(f"rates were computed for (counts, calibrate, decode, dispersion) {rates.settings}, "
                                 f"not {wanted_settings}")
            if rates is None:
                rates = rate_model(model, model_input, counts=counts, calibrate=calibrate, decode=decode, dispersion=dispersion,
                                   seed=seed, device=dev, batch_size=batch_size)
            cal, base, cal_codes, phi, codes, lib = (rates.cal, rates.base, rates.cal_codes, rates.phi,
                                                     rates.codes, rates.lib)
            cal_of = cal_codes[index]
            rng = np.random.default_rng(int(seed))
            pos = 0
            for block in decode_rows(model, X_ref, index, decode, gen, dev, batch_size):
                part = slice(pos, pos + len(block))
                pos += len(block)
                rate = profile(block) * cal[cal_of[part]] + base[cal_of[part]]
                if mult is not None:
                    rate *= mult[codes[index[part]]]
                c = sample_counts(rate, lib[index[part]], phi, rng)
                count_blocks.append(sp.csr_matrix(c))
                scale = TARGET_SUM / np.maximum(lib[index[part]], 1.0)
                blocks.append(sp.csr_matrix(np.log1p(c * scale[:, None]).astype(np.float32)))
    empty = sp.csr_matrix((0, n_genes), dtype=np.float32)
    X = sp.vstack(blocks, format="csr", dtype=np.float32) if blocks else empty

    obs = pd.DataFrame(
        {CELLTYPE: pd.Categorical(celltypes, categories=order)},
        index=pd.Index([f"cell_{i}" for i in range(len(index))]),
    )
    var = pd.DataFrame(index=model_input.var_names.copy())
    out = anndata.AnnData(X=X, obs=obs, var=var)
    if counts != "none":
        out.layers[COUNTS_LAYER] = sp.vstack(count_blocks, format="csr", dtype=np.float32) if count_blocks else empty
        out.obs["total_counts"] = rates.lib[index].astype(np.float64)
        out.uns["vae_identity"] = json.dumps(rates.identity)  # a JSON string: type names may hold '/'
    return out
