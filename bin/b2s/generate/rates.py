"""Per-type expression rates from the trained VAE: decoding, calibration to the reference,
dispersion, and the rate model that generation samples from."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from b2s._constants import CELLTYPE, COUNTS_LAYER
from b2s.errors import InputError
from b2s.model.device import resolve_device
from b2s.model.vae import BetaVAE, GeneSubsetVAE, load_weights, state_dict_shapes
from b2s.preprocess import TARGET_SUM
from b2s.utils import indicator

DECODE_CHOICES = ("sample", "mean")
CALIBRATE_CHOICES = ("type", "gene")
#: NB dispersion around each reference cell's own decoded rate, or around its type's mean rate
DISPERSION_CHOICES = ("residual", "type")
#: GENERATE's defaults (picked on the realism benchmark, see b2s.generate.cells' docstring): the only copy
#: of the options the pipeline never passes (batch_size: cells per forward pass, memory only).
DEFAULTS = {"decode": "mean", "counts": "nb", "calibrate": "type", "dispersion": "residual", "batch_size": 4096}
COUNTS_CHOICES = ("nb", "poisson", "none")
#: Dispersion bounds (NB variance = m + phi * m^2): near-Poisson floor, and a cap for genes seen in few cells.
PHI_RANGE = (1e-4, 1e3)


def as_model(state_dict_or_model: object, n_genes: int, hidden_size: int, device: torch.device,
              reparam: str | None = None) -> BetaVAE:
    """Accept a BetaVAE, any module with the same state dict (e.g. omicverse's VAE), a state dict or a path.

    ``reparam`` (when given) sets the sampling form; a BetaVAE passed in keeps its own otherwise.
    """
    if isinstance(state_dict_or_model, GeneSubsetVAE):
        model = state_dict_or_model
        if reparam is not None and reparam != model.reparam:
            model = copy.copy(model)  # the sampling form is an attribute; the weights are shared
            model.reparam = reparam
    elif isinstance(state_dict_or_model, BetaVAE):
        model = state_dict_or_model
        if reparam is not None and reparam != model.reparam:
            other = BetaVAE(model.n_genes, model.hidden_size, reparam)
            other.load_state_dict(model.state_dict())
            model = other
    elif isinstance(state_dict_or_model, (str, bytes)) or hasattr(state_dict_or_model, "__fspath__"):
        model = load_weights(state_dict_or_model, n_genes, hidden_size, "cpu", reparam or "standard")
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
        model = BetaVAE(file_genes, file_hidden, reparam or "standard")
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    if model.n_genes != n_genes:
        raise InputError(
            f"--vae_weights was trained on {model.n_genes} genes, model input has {n_genes}; "
            "retrain or pass the model input it was trained on"
        )
    return model.to(device).eval()


def reference_counts(model_input: anndata.AnnData) -> tuple[sp.csr_matrix, np.ndarray] | None:
    """``(counts CSR float64, library size per cell)`` of the model input, or None if it carries no counts.

    Library size is ``obs['total_counts']`` (the cell's total over ALL reference genes, the
    normaliser of X) when present, else the row sums of ``layers['counts']``.
    """
    if COUNTS_LAYER not in model_input.layers:
        return None
    counts = sp.csr_matrix(model_input.layers[COUNTS_LAYER], dtype=np.float64)
    if "total_counts" in model_input.obs:
        lib = model_input.obs["total_counts"].to_numpy(dtype=np.float64)
    else:
        lib = np.asarray(counts.sum(axis=1)).ravel()
    return counts, lib


def type_dispersion(counts: sp.csr_matrix, lib: np.ndarray, codes: np.ndarray, n_types: int) -> np.ndarray:
    """Per-gene NB dispersion phi (variance = m + phi * m^2) pooled over cell types, moment estimate.

    Within type t the expected count of cell c is p[t, g] * lib[c] with p = type total / type
    library; phi[g] = sum over cells of ((x - p lib)^2 - p lib) / sum of (p lib)^2, clipped to
    :data:`PHI_RANGE`. Sparse throughout (sums of x, x^2 and x * lib per type).
    """
    ind = indicator(codes, n_types)
    sx = np.asarray((ind @ counts).todense())
    sx2 = np.asarray((ind @ counts.multiply(counts)).todense())
    sxl = np.asarray((ind @ sp.diags(lib) @ counts).todense())
    sl = np.asarray(ind @ lib).ravel()
    sl2 = np.asarray(ind @ (lib ** 2)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(sl[:, None] > 0, sx / sl[:, None], 0.0)
    resid = sx2 - 2 * p * sxl + p ** 2 * sl2[:, None] - p * sl[:, None]
    denom = (p ** 2 * sl2[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(denom > 0, resid.sum(axis=0) / denom, PHI_RANGE[0])
    return np.clip(np.nan_to_num(phi, nan=PHI_RANGE[0]), *PHI_RANGE)


def decode_rows(model: BetaVAE, X_ref: object, rows: np.ndarray, decode: str, gen: torch.Generator,
                 dev: torch.device, batch_size: int) -> "Iterator[np.ndarray]":
    """Decoded values (float32 dense blocks) of reference ``rows``, in batches."""
    with torch.inference_mode():
        yield from decode_batches(model, X_ref, rows, decode, gen, dev, batch_size)


def decode_batches(model: BetaVAE, X_ref: object, rows: np.ndarray, decode: str, gen: torch.Generator,
                    dev: torch.device, batch_size: int) -> "Iterator[np.ndarray]":
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        xb = X_ref[part]
        xb = xb.toarray() if sp.issparse(xb) else xb
        x = torch.as_tensor(np.asarray(xb, dtype=np.float32), device=dev)
        mu, logvar = model.encode(x)
        z = model.latent_mean(mu, logvar) if decode == "mean" else model.sample(mu, logvar, gen)
        yield model.decode(z).float().cpu().numpy()


def profile(block: np.ndarray) -> np.ndarray:
    """Decoded log values -> per-cell expression profile: expm1, each row scaled to sum to 1e4.

    The decoder's totals vary from cell to cell far more than real library-normalised cells do
    (whose rows sum to 1e4 by construction); rescaled, only the composition of each cell is kept,
    which brings the generated library sizes, marker r and typing closer to real cells'
    (benchmarks/README.md, realism section).
    """
    e = np.expm1(block.astype(np.float64))
    total = e.sum(axis=1, keepdims=True)
    return np.divide(e * TARGET_SUM, total, out=np.zeros_like(e), where=total > 0)


def type_sums(model: BetaVAE, model_input: anndata.AnnData, counts: sp.csr_matrix, lib: np.ndarray,
              codes: np.ndarray, n_types: int, decode: str, gen: torch.Generator, dev: torch.device,
              batch_size: int, moments: bool = False) -> tuple[np.ndarray, ...]:
    """Per type (rows ``codes``): sums of the decoded profiles and of the real normalised counts
    (counts / lib * 1e4) over the type's reference cells, types x genes, and the cell counts.

    With ``moments``, also the per-type sums that :func:`residual_dispersion` needs (each reference
    cell's counts against its own decoded profile p): ``sum lib x p``, ``sum lib^2 p^2``,
    ``sum lib^2 p`` and ``sum lib p``, accumulated in the same pass over the decoded blocks."""
    rows = np.flatnonzero(codes >= 0)
    X_ref = sp.csr_matrix(model_input.X) if sp.issparse(model_input.X) else np.asarray(model_input.X)
    shape = (n_types, model_input.n_vars)
    dec = np.zeros(shape)
    mom = {k: np.zeros(shape) for k in ("lxp", "l2p2", "l2p", "lp")} if moments else None
    pos = 0
    for block in decode_rows(model, X_ref, rows, decode, gen, dev, batch_size):
        part = rows[pos:pos + len(block)]
        pos += len(block)
        prof = profile(block)
        ind = indicator(codes[part], n_types)
        dec += ind @ prof
        if mom is not None:
            lp = prof * lib[part, None]
            mom["lxp"] += np.asarray((ind @ sp.csr_matrix(counts[part].multiply(lp))).todense())
            mom["l2p2"] += ind @ (lp * lp)
            mom["l2p"] += ind @ (lp * lib[part, None])
            mom["lp"] += ind @ lp
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(lib > 0, TARGET_SUM / np.where(lib > 0, lib, 1.0), 0.0)
    ind = indicator(codes, n_types)
    real = np.asarray((ind @ sp.diags(scale) @ counts).todense())
    n = np.asarray(ind.sum(axis=1)).ravel()
    return (dec, real, n, mom) if moments else (dec, real, n)


def residual_dispersion(counts: sp.csr_matrix, lib: np.ndarray, codes: np.ndarray, n_types: int,
                        cal: np.ndarray, base: np.ndarray, mom: dict[str, np.ndarray]) -> np.ndarray:
    """Per-gene NB dispersion of the reference counts around each cell's OWN calibrated rate.

    The expected count of reference cell c is ``mu = lib_c (cal[t, g] p_cg + base[t, g]) / 1e4``
    (p: its decoded profile), and ``phi[g] = sum ((x - mu)^2 - mu) / sum mu^2`` over all reference
    cells (moment estimate, clipped to :data:`PHI_RANGE`). Where the decoder reproduces a cell's
    own deviations from its type, that part of the variance is no longer drawn a second time as
    noise; with a decoder that outputs one profile per type this is close to :func:`type_dispersion`.
    """
    ind = indicator(codes, n_types)
    sx2 = np.asarray((ind @ counts.multiply(counts)).todense())
    sxl = np.asarray((ind @ sp.diags(lib) @ counts).todense())
    sl = np.asarray(ind @ lib).ravel()[:, None]
    sl2 = np.asarray(ind @ (lib ** 2)).ravel()[:, None]
    k, k2 = 1.0 / TARGET_SUM, 1.0 / TARGET_SUM ** 2
    sxmu = k * (cal * mom["lxp"] + base * sxl)
    smu2 = k2 * (cal ** 2 * mom["l2p2"] + 2 * cal * base * mom["l2p"] + base ** 2 * sl2)
    smu = k * (cal * mom["lp"] + base * sl)
    resid = (sx2 - 2 * sxmu + smu2 - smu).sum(axis=0)
    denom = smu2.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(denom > 0, resid / denom, PHI_RANGE[0])
    return np.clip(np.nan_to_num(phi, nan=PHI_RANGE[0]), *PHI_RANGE)


def calibration_from(dec: np.ndarray, real: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(c, base)`` from :func:`type_sums`: rate = c * profile(decoded) + base has, over a type's
    reference cells, the mean of their real normalised counts. Where the decoder never expresses a
    gene in a type (ReLU zeros), c = 0 and base = that real mean; else base = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cal = np.where(dec > 0, real / dec, 0.0)
        base = np.where(dec > 0, 0.0, real / np.maximum(n, 1)[:, None])
    return cal, base


#: genes (most variable between the reference's type means) on which the VAE's own separation is judged
VAE_IDENTITY_GENES = 1000


def vae_identity(dec: np.ndarray, real: np.ndarray, n: np.ndarray, types: list[str]) -> dict[str, object]:
    """How well the VAE by itself tells the types apart, before the per-type calibration.

    The per-type calibration gives every generated type its reference mean, so the output's
    identity check passes whatever the VAE learnt. Here each type's mean decoded profile is
    compared with the reference type means on the :data:`VAE_IDENTITY_GENES` genes whose log
    means vary most between types, centred per gene across types (only type-specific deviations
    count): a type is told apart when its decoded deviations correlate best with its own
    reference type. An undertrained VAE decodes one average cell: ~0 types, margin ~0.
    """
    keep = n > 0
    if keep.sum() < 2:
        return {"n_types": int(keep.sum()), "told_apart": None, "median_margin": None}
    d = np.log1p(dec[keep] / n[keep, None])
    r = np.log1p(real[keep] / n[keep, None])
    top = np.argsort(-r.var(axis=0))[:VAE_IDENTITY_GENES]
    d, r = d[:, top] - d[:, top].mean(axis=0), r[:, top] - r[:, top].mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (r / np.linalg.norm(r, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    corr = np.nan_to_num(corr, nan=-1.0)
    own = np.diag(corr)
    other = np.where(np.eye(len(own), dtype=bool), -np.inf, corr).max(axis=1)
    margin = own - other
    return {"n_types": int(len(own)), "told_apart": int((margin > 0).sum()),
            "median_margin": round(float(np.median(margin)), 4),
            "not_told_apart": [t for t, m in zip(np.asarray(types)[keep], margin) if m <= 0]}


def sample_counts(rate: np.ndarray, lib: np.ndarray, phi: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Integer counts (float32) with mean ``lib * rate / 1e4``: Poisson, or gamma-Poisson (NB) with ``phi``."""
    mean = rate * (lib[:, None] / TARGET_SUM)
    if phi is not None:
        shape = 1.0 / phi[None, :]
        mean = rng.gamma(np.broadcast_to(shape, mean.shape), mean / shape)
    return rng.poisson(mean).astype(np.float32)


def shift_multipliers(shift: pd.DataFrame | None, types: list[str], genes: pd.Index) -> np.ndarray | None:
    """Types (model input order) x genes array of ``2 ** shift`` (1 where ``shift`` has no entry)."""
    if shift is None:
        return None
    if not np.isfinite(shift.to_numpy(np.float64)).all():
        raise InputError("bulk shifts contain NaN or infinite values; rerun GENERATE")
    lfc = shift.reindex(index=types, columns=pd.Index(genes)).fillna(0.0).to_numpy(np.float64)
    return np.exp2(lfc)


@dataclass(frozen=True)
class RateModel:
    """What turns decoded cells into count rates, from the whole reference: per-type (or pooled)
    calibration ``cal``/``base`` (rows indexed by ``cal_codes`` of each reference cell), NB
    dispersion ``phi`` (None for Poisson), the reference's type codes and library sizes
    (:func:`reference_counts`) and the VAE identity record."""

    cal: np.ndarray
    base: np.ndarray
    cal_codes: np.ndarray
    phi: np.ndarray | None
    codes: np.ndarray
    lib: np.ndarray
    identity: dict[str, object]
    settings: tuple[str, str, str, str]  # (counts, calibrate, decode, dispersion) it was computed for


def rate_model(state_dict_or_model: object, model_input: anndata.AnnData, counts: str = DEFAULTS["counts"],
               calibrate: str = DEFAULTS["calibrate"], decode: str = DEFAULTS["decode"], seed: int = 42,
               device: str | torch.device = "cpu", batch_size: int = 4096, hidden_size: int = 256,
               reparam: str | None = None, dispersion: str = DEFAULTS["dispersion"]) -> RateModel:
    """Calibration, dispersion and VAE identity over every reference type (so a group's cells do not
    depend on which other types it has). Decodes the whole reference once; with ``decode='mean'``
    the result is the same for every seed, so GENERATE computes it once per task, not per group
    (benchmarks/README.md, "GENERATE: the rate model once per batch of groups")."""
    cts, lib = reference_counts(model_input)
    labels = model_input.obs[CELLTYPE].astype(str).to_numpy()
    available = list(pd.unique(labels))
    codes = pd.Categorical(labels, categories=available).codes.astype(np.int64)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = as_model(state_dict_or_model, int(model_input.n_vars), hidden_size, dev, reparam)
    residual = counts == "nb" and dispersion == "residual"
    dec, real, n_of, *mom = type_sums(model, model_input, cts, lib, codes, len(available), decode,
                                      torch.Generator(device=dev).manual_seed(int(seed) + 1), dev, batch_size,
                                      moments=residual)
    identity = vae_identity(dec, real, n_of, available)
    print(f"the VAE's own type separation (decoded profiles before calibration): "
          f"{identity['told_apart']} of {identity['n_types']} types told apart, median margin "
          f"{identity['median_margin']}", flush=True)
    if calibrate == "type":
        cal, base = calibration_from(dec, real, n_of)
        cal_codes = codes
    else:
        cal, base = calibration_from(dec.sum(axis=0, keepdims=True), real.sum(axis=0, keepdims=True),
                                     n_of.sum(keepdims=True))
        cal_codes = np.zeros_like(codes)
        if residual:
            mom = [{k: v.sum(axis=0, keepdims=True) for k, v in mom[0].items()}]
    if residual:
        phi = residual_dispersion(cts, lib, cal_codes, len(cal), cal, base, mom[0])
    else:
        phi = type_dispersion(cts, lib, codes, len(available)) if counts == "nb" else None
    return RateModel(cal, base, cal_codes, phi, codes, lib, identity, (counts, calibrate, decode, dispersion))
