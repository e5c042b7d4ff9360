"""The ``wls`` fraction estimator: pairwise-test markers, count-space profiles, variance-weighted NNLS.

Model: a bulk sample is the sum of its cells' counts, so on the marker genes
``bulk_g = sum_t n_t * mu_tg + noise`` where ``mu_tg`` is the MEAN raw count per cell of type t
(per-type mRNA content included: a type with twice the transcripts per cell contributes twice
per cell) and ``n_t`` the number of cells. The coefficients are therefore cell numbers, and
normalising them gives fractions of CELLS, not of reads (no separate mRNA-bias step is needed).

Steps (all samples at once; no per-sample Python loop):

1. markers: :func:`b2s.fractions.markers.pairwise_markers` (Welch t on per-cell log CP10k for
   every ordered pair of types), or a curated ``--markers`` file;
2. signature ``mu`` and per-cell variance ``v`` (types x markers) of raw counts from two sparse
   indicator products;
3. variance-aware weights (DWLS-like, iteratively re-weighted ``n_irls`` times from the current
   fit, so the weights follow each sample's own composition): the residual of gene g has
   variance ``sum_t c_t^2 v_tg / m_t`` (error of the reference mean from m_t cells, scaled by
   the fitted cell numbers) + ``sum_t n_t v_tg`` (which cells the bulk happened to contain) +
   Poisson counting noise + ``phi mu_g^2`` (gene-level deviations proportional to expression,
   phi per sample from the residuals); the two middle terms scale with 1 / library size, which
   TPM/FPKM lack: their scale is then fitted per sample (:func:`fit_bulk_scale`, closer to the
   fractions of the counts than taking TPM as 1e6 reads; benchmarks/README.md, "Bulk units");
   weights = 1 / variance, times Huber weights on the standardised residuals, so noisy markers
   and genes that the reference does not predict for this bulk get little say (on the Hao splits
   this removed a B-cell over-estimate driven by a few genes);
4. an exact batched active-set (Lawson-Hanson) NNLS on the per-sample weighted normal
   equations (samples x types x types). A first-order solver (coordinate descent) stalled
   before the optimum on nearly collinear types;
5. an errors-in-variables correction of those equations (``eiv``): a signature averaged over
   few reference cells is noisy, which inflates the diagonal of S'WS and shrinks that type's
   coefficient (on the bundled data the CD4 types with 5 and 11 reference cells lost their
   cells to Tregs); half the expected inflation, ``sum_g w_g v_tg / m_t``, is subtracted.
   Half, because the full correction over-corrects on the bundled data and 0.3-0.7 are alike on
   the real splits.

Each step and default (``eiv`` 0.5, marker fold >= 3, ``n_per_pair``, Huber) was chosen on Hao
splits 0-2 and the bundled data and checked on Hao splits 3-7 (benchmarks/README.md, "Design
measurements of the fraction estimators").
"""

from __future__ import annotations

import numpy as np


def _solve_on(gram: np.ndarray, rhs: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Batched solve of G_FF z_F = h_F with z = 0 off the free set F (per sample)."""
    k = gram.shape[1]
    both = free[:, :, None] & free[:, None, :]
    eye = np.eye(k, dtype=bool)[None]
    m = np.where(both, gram, 0.0) + np.where(eye & ~free[:, :, None], 1.0, 0.0)
    # a tiny ridge keeps exactly collinear free columns solvable
    ridge = 1e-12 * np.maximum(np.einsum("sii->s", gram), 1e-300)
    m = m + ridge[:, None, None] * np.eye(k)[None]
    return np.linalg.solve(m, np.where(free, rhs, 0.0)[:, :, None])[:, :, 0] * free


def batched_nnls_gram(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Exact min_c 0.5 c'G_s c - h_s'c, c >= 0, for every sample s at once (Lawson-Hanson).

    ``gram`` samples x k x k (symmetric PD), ``rhs`` samples x k; returns samples x k. The
    active-set steps run for all samples together as masked batched solves (k is the number of
    cell types, so a solve is tiny); each sample stops when no excluded type would lower its
    objective. Exact, so nearly collinear types (CD4 / CD8 T cells) are solved to the optimum
    rather than to a first-order method's slow plateau.
    """
    s, k = rhs.shape
    c = np.zeros((s, k))
    free = np.zeros((s, k), dtype=bool)
    scale = np.maximum(np.abs(rhs).max(axis=1), 1e-300)
    tol = 1e-10 * scale[:, None]
    for _ in range(3 * k + 10):
        w = rhs - np.einsum("sij,sj->si", gram, c)  # minus the gradient
        cand = ~free & (w > tol)
        todo = cand.any(axis=1)
        if not todo.any():
            break
        j = np.argmax(np.where(cand, w, -np.inf), axis=1)
        free[np.flatnonzero(todo), j[todo]] = True
        for _ in range(3 * k + 10):  # inner loop: step back until the free-set solution is positive
            idx = np.flatnonzero(todo)
            if idx.size == 0:
                break
            z = _solve_on(gram[idx], rhs[idx], free[idx])
            f = free[idx]
            bad = (f & (z <= 0)).any(axis=1)
            good = idx[~bad]
            c[good] = z[~bad]
            todo[good] = False
            if not bad.any():
                break
            bi = idx[bad]
            zb, cb, fb = z[bad], c[bi], f[bad]
            neg = fb & (zb <= 0)
            ratio = np.where(neg, cb / np.where(neg, cb - zb, 1.0), np.inf)
            alpha = np.clip(ratio.min(axis=1), 0.0, 1.0)
            cb = cb + alpha[:, None] * (zb - cb)
            free[bi] = fb & (cb > tol[bi])
            c[bi] = np.where(free[bi], cb, 0.0)
    return c


def weighted_normal_equations(sig: np.ndarray, weights: np.ndarray, bulk: np.ndarray,
                              sig_noise: np.ndarray | None = None, eiv: float = 0.0,
                              eiv_cap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``G_s = S' W_s S`` and ``h_s = S' W_s b_s`` (``sig`` genes x k, ``weights`` and
    ``bulk`` samples x genes).

    ``sig_noise`` (genes x k): the variance of each signature entry as an estimate (per-cell
    variance / reference cells). A signature estimated from few cells inflates the diagonal of
    ``G`` by ``sum_g w_g noise_gt`` on average, which shrinks that type's coefficient towards 0
    (errors-in-variables attenuation: other types absorb its cells). ``eiv`` subtracts that share
    of the expected inflation (capped at ``eiv_cap`` of the diagonal, so ``G`` stays positive
    definite); ``h`` needs no correction (the bulk is independent of the reference's noise).
    """
    gram = np.einsum("gk,sg,gl->skl", sig, weights, sig, optimize=True)
    rhs = np.einsum("gk,sg->sk", sig, weights * bulk, optimize=True)
    if sig_noise is not None and eiv > 0:
        w = np.broadcast_to(weights, bulk.shape)
        diag = np.einsum("sii->si", gram)
        corr = np.minimum(eiv * (w @ sig_noise), eiv_cap * diag)
        k = sig.shape[1]
        gram[:, np.arange(k), np.arange(k)] -= corr
    return gram, rhs


#: Candidate counting-noise scales (CPM units per read, p = 1e6 / library over the shared genes)
#: when the bulk carries no library size: libraries from 1e2 to 1e10 reads, 10 steps per decade.
SCALE_GRID: np.ndarray = np.logspace(-4.0, 4.0, 81)
#: E[rho'(z^2) z^2] = P(|z| <= 1) for a standard normal z: dividing Huber's rho by it makes the
#: scale estimate of :func:`fit_bulk_scale` consistent (unbiased for Gaussian residuals).
HUBER_C: float = 0.6826894921370859
#: Candidate ``phi`` (expression-proportional variance) while fitting p: 0 and 1e-6 to 10.
PHI_GRID: np.ndarray = np.concatenate([[0.0], np.logspace(-6.0, 1.0, 36)])


def _phi(r2: np.ndarray, v: np.ndarray, mu: np.ndarray, multiplicative: str | float) -> np.ndarray:
    """Per-sample ``phi`` of the expression-proportional term ``phi mu^2`` (samples x 1): fitted
    from the residuals (robust moment estimate) for ``"fit"``, else the given constant (or 0)."""
    if multiplicative == "fit":
        return np.maximum(np.median((r2 - v) / np.maximum(mu, 1e-12) ** 2, axis=1), 0.0)[:, None]
    return np.full((r2.shape[0], 1), float(multiplicative) if multiplicative else 0.0)


def _floored(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 1e-3 * np.maximum(np.median(v, axis=1, keepdims=True), 1e-300))


def _quasi_loss(r2: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-sample robust Gaussian quasi-likelihood ``mean(log v + rho(r^2 / v) / HUBER_C)``."""
    v = _floored(v)
    z2 = r2 / v
    return np.mean(np.log(v) + np.where(z2 <= 1.0, z2, 2.0 * np.sqrt(z2) - 1.0) / HUBER_C, axis=1)


def fit_bulk_scale(bulk: np.ndarray, mu: np.ndarray, fixed: np.ndarray, per_read: np.ndarray,
                   multiplicative: str | float = "fit", grid: np.ndarray = SCALE_GRID,
                   rounds: int = 3) -> np.ndarray:
    """Counting-noise scale ``p`` per sample for a bulk without library sizes (TPM/FPKM).

    The residual variance of gene g is ``fixed_g + p * per_read_g + phi mu_g^2`` (module
    docstring); ``p`` is the one unknown a library size would give. ``p`` (on ``grid``) and, with
    ``multiplicative="fit"``, ``phi`` (on :data:`PHI_GRID`) minimise a robust Gaussian
    quasi-likelihood over the markers (:func:`_quasi_loss`: Huber's rho on the squared standardised
    residual, divided by :data:`HUBER_C` so that Gaussian residuals give the true variance; outlier
    genes do not inflate it), by ``rounds`` of alternating grid searches. The CPM values are
    scale-free, so this is the same for TPM, FPKM or any multiple of them.
    """
    r2 = (bulk - mu) ** 2
    fit_phi = multiplicative == "fit"
    phi = _phi(r2, fixed, mu, 0.0 if fit_phi else multiplicative)  # "fit": start from phi = 0
    p = np.ones((bulk.shape[0], 1))
    for _ in range(rounds if fit_phi else 1):
        loss = np.stack([_quasi_loss(r2, fixed + g * per_read + phi * mu ** 2) for g in grid])
        p = grid[np.argmin(loss, axis=0)][:, None]
        if fit_phi:
            loss = np.stack([_quasi_loss(r2, fixed + p * per_read + g * mu ** 2) for g in PHI_GRID])
            phi = PHI_GRID[np.argmin(loss, axis=0)][:, None]
    return p[:, 0]


def wls_fit(sig: np.ndarray, var: np.ndarray, n_ref: np.ndarray, bulk: np.ndarray,
            bulk_scale: np.ndarray | None, sig_scale: float, n_irls: int = 2,
            sampling: bool = True, huber: float | None = 1.0, multiplicative: str | float = "fit",
            eiv: float = 0.5, info: dict | None = None) -> np.ndarray:
    """Cell-number coefficients (samples x k) of ``bulk`` (samples x genes, CPM) on ``sig``
    (genes x k, CPM-scaled mean counts per cell) with variance weights (module docstring).

    ``var``: per-cell variance of ``sig``'s units (genes x k); ``n_ref``: reference cells per
    type; ``bulk_scale``: CPM units per raw count of each sample (p; Poisson term p * mu), or
    ``None`` when the bulk has no library sizes (TPM/FPKM): then p is fitted per sample in each
    re-weighting (:func:`fit_bulk_scale`) and the last fit is left in ``info['bulk_scale']``;
    ``sig_scale``: CPM units per raw count of the signature (q). A coefficient c_t stands for
    c_t * q / p cells, so the cell-sampling variance is ``(p / q) * sum_t c_t v_tg``. ``eiv``:
    share of the errors-in-variables correction (:func:`weighted_normal_equations`).
    """
    mean_gene = np.maximum(sig.mean(axis=1), 1e-12)
    w = np.broadcast_to(1.0 / mean_gene, bulk.shape)  # start: Poisson-like weights at the signature mean
    noise = var / n_ref[None, :]  # variance of each reference mean
    gram, rhs = weighted_normal_equations(sig, w, bulk, noise, eiv)
    c = batched_nnls_gram(gram, rhs)
    fit_scale = bulk_scale is None
    for _ in range(n_irls):
        mu = c @ sig.T  # samples x genes fitted
        fixed = (c ** 2) @ noise.T
        # per read of the bulk: counting noise, and (with sampling) which cells the bulk contained
        per_read = np.maximum(mu, 0) + ((c @ var.T) / sig_scale if sampling else 0.0)
        if fit_scale:
            bulk_scale = fit_bulk_scale(bulk, mu, fixed, per_read, multiplicative)
            if info is not None:
                info["bulk_scale"] = bulk_scale
        v = fixed + per_read * bulk_scale[:, None]
        # gene-level deviations that scale with expression (platform, person, the bulk's own
        # noise): phi * mu^2, phi per sample from the residuals unless given
        r2 = (bulk - mu) ** 2
        w = 1.0 / _floored(v + _phi(r2, v, mu, multiplicative) * mu ** 2)
        if huber:
            # Huber weights on standardised residuals (scale: MAD per sample): genes whose
            # held-out expression departs far from the reference (outlier cells, a state the
            # reference lacks) lose influence instead of pulling the fit
            z = (bulk - mu) * np.sqrt(w)
            scale = 1.4826 * np.median(np.abs(z), axis=1, keepdims=True)
            az = np.abs(z) / np.maximum(scale, 1e-300)
            w = w * np.minimum(1.0, huber / np.maximum(az, 1e-300))
        gram, rhs = weighted_normal_equations(sig, w, bulk, noise, eiv)
        c = batched_nnls_gram(gram, rhs)
    return c
