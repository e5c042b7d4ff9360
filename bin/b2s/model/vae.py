"""The beta-VAE of Bulk2Single (Bulk2Space), with omicverse-compatible state-dict keys.

Layout (design.md section 2): encoder ``genes -> 2048 -> 1024 -> 512 -> 2*latent`` with ReLU
between layers and none after the last; decoder ``latent -> 512 -> 1024 -> 2048 -> genes`` with a
ReLU after every layer, so reconstructions are >= 0. The layers live in two ``nn.ModuleList``s
named ``encoder`` and ``decoder`` indexed in forward order, which gives exactly the keys and
shapes of omicverse's ``VAE`` (``encoder.{i}.weight|bias``, ``decoder.{i}.weight|bias``): weights
load in either tool.

Sampling uses the standard reparameterisation ``z = mu + eps * exp(logvar / 2)``; omicverse's
forward-pass form ``z = eps + mu * exp(logvar / 2)`` is an opt-in (``reparam="omicverse"``). The
form is an attribute, not a weight: state dicts are the same either way.

The loss can give each latent dimension "free bits" (Kingma et al. 2016): the KL of a dimension,
averaged over the batch, is charged only above ``free_bits`` nats. Why (benchmarks/README.md,
realism section): with MSE + 4 * KL on log-normalised data the KL weight equals a Gaussian decoder
of variance 2, far wider than the data, so the posterior collapses (KL ~1e-5 per entry) and the
decoder emits one average cell for every type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from b2s.errors import InputError

#: Widths of the hidden layers, encoder order (the decoder mirrors them).
HIDDEN_LAYERS: tuple[int, ...] = (2048, 1024, 512)
#: Reparameterisation forms: the standard one, and omicverse 2.3.2's forward pass.
REPARAM_CHOICES = ("standard", "omicverse")


class BetaVAE(nn.Module):
    """Fully connected beta-VAE over log-normalised expression.

    Args:
        n_genes: number of input genes (model input columns).
        hidden_size: latent dimension (omicverse's ``hidden_size``, default 256).
        reparam: ``standard`` (``z = mu + eps * std``) or ``omicverse`` (``z = eps + mu * std``).
    """

    def __init__(self, n_genes: int, hidden_size: int = 256, reparam: str = "standard") -> None:
        super().__init__()
        if n_genes < 1 or hidden_size < 1:
            raise ValueError(f"BetaVAE needs n_genes >= 1 and hidden_size >= 1, got {n_genes}, {hidden_size}")
        if reparam not in REPARAM_CHOICES:
            raise ValueError(f"reparam must be one of {REPARAM_CHOICES}, got {reparam!r}")
        self.reparam = reparam
        self.n_genes = int(n_genes)
        self.hidden_size = int(hidden_size)
        enc = [self.n_genes, *HIDDEN_LAYERS, 2 * self.hidden_size]
        dec = [self.hidden_size, *reversed(HIDDEN_LAYERS), self.n_genes]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dec[:-1], dec[1:]))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, logvar)``, each ``(batch, hidden_size)``."""
        last = len(self.encoder) - 1
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i != last:
                x = F.relu(x)
        mu, logvar = torch.chunk(x, 2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent codes to expression; ReLU after every layer keeps the output >= 0."""
        for layer in self.decoder:
            z = F.relu(layer(z))
        return z

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``z`` with ``eps ~ N(0, 1)`` from ``generator`` in the model's reparameterisation form."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        if self.reparam == "omicverse":
            return eps + mu * torch.exp(0.5 * logvar)
        return mu + eps * torch.exp(0.5 * logvar)

    def latent_mean(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The mean of the distribution ``z`` is drawn from (``mu``, or ``mu * std`` for omicverse's form)."""
        return mu * torch.exp(0.5 * logvar) if self.reparam == "omicverse" else mu

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample and decode: returns ``(x_hat, mu, logvar)``."""
        mu, logvar = self.encode(x)
        return self.decode(self.sample(mu, logvar, generator)), mu, logvar


def variable_genes(X: object, n: int) -> np.ndarray:
    """Sorted column positions of the ``n`` columns of ``X`` (cells x genes, log-normalised) with the
    largest variance; all columns when ``n`` is 0 or >= their number. Deterministic (float64
    moments, stable sort), so TRAIN_VAE and GENERATE pick the same genes from the same model input."""
    n_genes = int(X.shape[1])
    if n <= 0 or n >= n_genes:
        return np.arange(n_genes)
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        mean = np.asarray(X.mean(axis=0)).ravel()
        var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean ** 2
    else:
        var = np.asarray(X, dtype=np.float64).var(axis=0)
    return np.sort(np.argsort(-var, kind="stable")[:n])


class GeneSubsetVAE(BetaVAE):
    """A BetaVAE trained on some genes of the model input, seen from the whole model input.

    ``encode`` takes all model genes and reads the VAE's own; ``decode`` returns all model genes,
    0 outside the VAE's (GENERATE's calibration then gives those genes their type's mean rate).
    The weights are the inner VAE's (same keys; ``state_dict`` / ``vae.pth`` hold only those).
    """

    def __init__(self, inner: BetaVAE, genes: np.ndarray, n_model_genes: int) -> None:
        if len(genes) != inner.n_genes or (len(genes) and not 0 <= min(genes) <= max(genes) < n_model_genes):
            raise ValueError(f"GeneSubsetVAE: {len(genes)} gene positions for a VAE of {inner.n_genes} genes "
                             f"within {n_model_genes} model genes")
        nn.Module.__init__(self)
        self.inner = inner
        self.reparam, self.hidden_size, self.n_genes = inner.reparam, inner.hidden_size, int(n_model_genes)
        self.register_buffer("genes", torch.as_tensor(np.asarray(genes), dtype=torch.long), persistent=False)

    def state_dict(self, *args, **kwargs):  # noqa: D102 - the inner VAE's weights only
        return self.inner.state_dict(*args, **kwargs)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        return self.inner.encode(x.index_select(1, self.genes))

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        inner = self.inner.decode(z)
        out = inner.new_zeros((inner.shape[0], self.n_genes))
        out[:, self.genes] = inner
        return out


def constant_decoder_vae(n_genes: int, hidden_size: int = 256) -> BetaVAE:
    """A VAE whose decoder gives every cell the same output. Through GENERATE's per-type calibration
    and NB sampling it yields each type's mean profile with count noise: the null that learned
    nothing inside a type (the realism benchmark's null row, and tests)."""
    model = BetaVAE(n_genes, hidden_size)
    with torch.no_grad():
        for layer in model.decoder:
            layer.weight.zero_()
            layer.bias.fill_(1.0)
    return model


def kl_term(mu: torch.Tensor, logvar: torch.Tensor, n_genes: int) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over the batch, divided by ``batch * genes`` (as Bulk2Space)."""
    return 0.5 * torch.sum(torch.exp(logvar) + mu.pow(2) - 1.0 - logvar) / (mu.shape[0] * n_genes)


def kl_penalty(mu: torch.Tensor, logvar: torch.Tensor, n_genes: int, free_bits: float) -> torch.Tensor:
    """KL charged with free bits: per latent dimension ``max(batch-mean KL, free_bits)``, summed, / genes.

    With ``free_bits`` 0 this is :func:`kl_term`.
    """
    per_dim = 0.5 * torch.mean(torch.exp(logvar) + mu.pow(2) - 1.0 - logvar, dim=0)
    return torch.clamp(per_dim, min=float(free_bits)).sum() / n_genes


def vae_loss(
    x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 4.0,
    free_bits: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(loss, recon, kl)``: ``loss = MSE(x_hat, x) + beta * KL penalty`` (MSE averaged over all
    entries); ``kl`` is the true KL term (:func:`kl_term`), the penalty adds free bits when > 0."""
    recon = F.mse_loss(x_hat, x)
    kl = kl_term(mu, logvar, x.shape[1])
    penalty = kl if free_bits <= 0 else kl_penalty(mu, logvar, x.shape[1], free_bits)
    return recon + beta * penalty, recon, kl


def state_dict_shapes(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Infer ``(n_genes, hidden_size)`` from a BetaVAE / omicverse VAE state dict."""
    n_genes = int(state["encoder.0.weight"].shape[1])
    hidden_size = int(state["decoder.0.weight"].shape[1])
    return n_genes, hidden_size


def reorder_genes(state: Mapping[str, torch.Tensor], index: list[int] | None) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose gene-facing layers follow ``index`` (new gene j = file gene ``index[j]``):
    the encoder's input columns and the decoder's last output rows. ``None`` returns ``state`` as is."""
    state = dict(state)
    if index is None:
        return state
    idx = torch.as_tensor(index, dtype=torch.long)
    last = f"decoder.{len(HIDDEN_LAYERS)}"
    state["encoder.0.weight"] = state["encoder.0.weight"].index_select(1, idx).contiguous()
    state[f"{last}.weight"] = state[f"{last}.weight"].index_select(0, idx).contiguous()
    state[f"{last}.bias"] = state[f"{last}.bias"].index_select(0, idx).contiguous()
    return state


def load_weights(
    path: str | os.PathLike, n_genes: int, hidden_size: int = 256, device: str | torch.device = "cpu",
    reparam: str = "standard", gene_index: list[int] | None = None,
) -> BetaVAE:
    """Load a state dict written by TRAIN_VAE (or omicverse's ``Bulk2Single.train``) into a BetaVAE.

    ``gene_index`` (from :func:`b2s.model.weights.check_weights`) reorders the gene-facing layers so
    the weights follow the model input's gene order.

    Raises:
        InputError: the file is missing, unreadable or not a VAE state dict, or its shapes do
            not fit ``n_genes`` / ``hidden_size``. The message names the file and the fix.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"--vae_weights {path} does not exist; pass the vae.pth written by TRAIN_VAE")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / not a torch file / pickled objects
        raise InputError(
            f"--vae_weights {path} could not be read as a torch state dict ({type(err).__name__}); "
            "pass the vae.pth written by TRAIN_VAE or omicverse's Bulk2Single.train"
        ) from None
    expected = BetaVAE(1, 1).state_dict().keys()
    if not isinstance(state, Mapping) or set(state.keys()) != set(expected):
        raise InputError(
            f"--vae_weights {path} is not a Bulk2Single VAE state dict (expected keys encoder.0-3 and "
            "decoder.0-3 weight/bias); pass the vae.pth written by TRAIN_VAE or omicverse's Bulk2Single.train"
        )
    file_genes, file_hidden = state_dict_shapes(state)
    if file_genes != n_genes:
        raise InputError(
            f"--vae_weights {path} was trained on {file_genes} genes, model input has {n_genes}; "
            "retrain or pass the model input it was trained on"
        )
    if file_hidden != hidden_size:
        raise InputError(
            f"--vae_weights {path} has hidden_size {file_hidden}, --hidden_size is {hidden_size}; "
            f"pass --hidden_size {file_hidden}"
        )
    model = BetaVAE(n_genes, hidden_size, reparam)
    try:
        model.load_state_dict(reorder_genes(state, gene_index))
    except RuntimeError:  # a layer in the middle has an unexpected width
        raise InputError(
            f"--vae_weights {path} has layer shapes that do not match the Bulk2Single VAE "
            f"({n_genes} genes, hidden_size {hidden_size}); retrain with this pipeline's TRAIN_VAE"
        ) from None
    return model.to(device)
