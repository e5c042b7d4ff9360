"""The neural estimators ``tape`` and ``scaden``: MLPs trained on pseudo-bulk simulated from the reference."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from b2s.errors import InputError
from b2s.fractions.nnls import chosen_markers
from b2s.fractions.signature import as_csr, bulk_matrix, celltype_labels, normalise_rows, shared_genes, type_profiles


def simulate_pseudobulk(reference: anndata.AnnData, n_samples: int, n_cells: int,
                        rng: np.random.Generator, gene_pos: np.ndarray | None = None,
                        sparse_prob: float = 0.5) -> tuple[sparse.csr_matrix, np.ndarray, list[str]]:
    """Pseudo-bulks summed from single reference cells with known cell fractions.

    Fractions ~ Dirichlet(1); in the first ``sparse_prob`` share of mixtures a random
    ``sparse_prob`` share of the types is set to zero (mixtures without some types, as in
    TAPE). Cell numbers ~ Multinomial(n_cells, fractions); cells of each type are drawn with
    replacement. One sparse (mixtures x cells) count matrix times the CSR reference builds all
    mixtures at once. Returns (counts mixtures x genes CSR, true cell fractions, type names).
    """
    lab = celltype_labels(reference)
    k = len(lab.categories)
    prop = rng.dirichlet(np.ones(k), n_samples)
    n_sparse = int(n_samples * sparse_prob)
    n_zero = int(k * sparse_prob)
    if n_sparse and n_zero and k > 1:
        # random subset per row: rank a uniform matrix and zero the n_zero smallest
        ranks = np.argsort(np.argsort(rng.random((n_sparse, k)), axis=1), axis=1)
        prop[:n_sparse][ranks < n_zero] = 0.0
        prop[:n_sparse] /= prop[:n_sparse].sum(axis=1, keepdims=True)
    counts = rng.multinomial(n_cells, prop)  # mixtures x types
    # cells sorted by type: a draw of type t is start[t] + floor(u * size[t])
    order = np.argsort(lab.codes, kind="stable")
    size = np.bincount(lab.codes, minlength=k)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    draw_type = np.repeat(np.tile(np.arange(k), n_samples), counts.ravel())
    draw_row = np.repeat(np.arange(n_samples), counts.sum(axis=1))
    pick = order[start[draw_type] + np.floor(rng.random(draw_type.size) * size[draw_type]).astype(np.int64)]
    mix = sparse.csr_matrix((np.ones(pick.size), (draw_row, pick)), shape=(n_samples, reference.n_obs))
    x = reference.X if gene_pos is None else reference.X[:, gene_pos]
    summed = (mix @ as_csr(x)).tocsr()
    return summed, counts / counts.sum(axis=1, keepdims=True), list(lab.categories)


def _scale_input(x: np.ndarray, lib: np.ndarray) -> np.ndarray:
    """CPM (with a given library size) -> log2(x+1) -> per-sample min-max to [0, 1]."""
    x = np.log2(x / np.where(lib > 0, lib, 1)[:, None] * 1e6 + 1.0)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def _zscore(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene standardisation with the training (pseudo-bulk) mean and sd."""
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return ((train - mu) / sd).astype(np.float32), ((test - mu) / sd).astype(np.float32)


def _train_mlp(kind: str, x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, epochs: int,
               batch_size: int, lr: float, recon: np.ndarray | None = None,
               tape_dropout: float = 0.5) -> np.ndarray:
    """Train the ``tape`` or ``scaden`` networks on (x, y); return predicted fractions for test."""
    import torch
    from torch import nn

    n_in, n_out = x.shape[1], y.shape[1]

    def mlp(widths: list[int], drops: list[float], act: type[nn.Module]) -> nn.Sequential:
        layers: list[nn.Module] = []
        prev = n_in
        for w, d in zip(widths, drops):
            layers += [nn.Linear(prev, w), act()]
            if d > 0:
                layers.append(nn.Dropout(d))
            prev = w
        layers.append(nn.Linear(prev, n_out))
        return nn.Sequential(*layers)

    xt, yt, tt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(test)
    rt = xt if recon is None else torch.from_numpy(recon)
    preds = []
    # the networks are tiny: one thread avoids thread-sync overhead (severe on a busy machine)
    # and keeps results independent of the core count; the caller's setting is restored
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # fork_rng: seed weight init and dropout without touching the caller's global RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            if kind == "scaden":
                nets = [mlp([256, 128, 64, 32], [0, 0, 0, 0], nn.ReLU),
                        mlp([512, 256, 128, 64], [0, 0.3, 0.2, 0.1], nn.ReLU),
                        mlp([1024, 512, 256, 128], [0, 0.6, 0.3, 0.1], nn.ReLU)]
                decoder = None
            else:
                nets = [mlp([512, 256, 128, 64], [tape_dropout] * 4, nn.CELU)]
                # TAPE: fractions @ relu(signature) reconstructs the input (linear mixing model)
                decoder = nn.Parameter(torch.rand(n_out, rt.shape[1], generator=gen) * 0.1)
            for net in nets:
                params = list(net.parameters()) + ([decoder] if decoder is not None else [])
                opt = torch.optim.Adam(params, lr=lr)
                net.train()
                n = xt.shape[0]
                for _ in range(epochs):
                    perm = torch.randperm(n, generator=gen)
                    for i in range(0, n, batch_size):
                        idx = perm[i:i + batch_size]
                        frac = torch.softmax(net(xt[idx]), dim=1)
                        loss = torch.nn.functional.l1_loss(frac, yt[idx])
                        if decoder is not None:
                            loss = loss + torch.nn.functional.l1_loss(frac @ torch.relu(decoder), rt[idx])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                net.eval()
                with torch.no_grad():
                    preds.append(torch.softmax(net(tt), dim=1).numpy().astype(np.float64))
    finally:
        torch.set_num_threads(n_threads)
    return np.mean(preds, axis=0)


def mlp_fractions(kind: str, bulk: pd.DataFrame, reference: anndata.AnnData, seed: int = 42,
                n_pseudobulk: int = 1000, n_cells: int = 200, n_markers: int = 100,
                epochs: int | None = None, batch_size: int = 64, lr: float = 1e-3,
                scaling: str = "zscore", tape_dropout: float = 0.5,
                markers: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Simulate cell-level pseudo-bulks, train the networks, predict the real bulk."""
    ref_pos, bulk_pos = shared_genes(bulk, reference)
    prof = type_profiles(reference, ref_pos)
    genes = chosen_markers(prof["mean"], n_markers, markers, reference, ref_pos)
    rng = np.random.default_rng(seed)
    print(f"simulating {n_pseudobulk} pseudo-bulks of {n_cells} cells", flush=True)
    summed, y, types = simulate_pseudobulk(reference, n_pseudobulk, n_cells, rng, ref_pos)
    sim_lib = np.asarray(summed.sum(axis=1)).ravel()
    x = _scale_input(summed[:, genes].toarray(), sim_lib)
    b = bulk_matrix(bulk, bulk_pos)
    test = _scale_input(b[:, genes], b.sum(axis=1))
    if epochs is None:
        epochs = 20 if kind == "tape" else 10
    if scaling not in ("zscore", "minmax"):
        raise InputError(f"fraction option scaling='{scaling}' is unknown; use zscore or minmax")
    recon = x  # TAPE's decoder reconstructs the non-negative min-max scaled input
    if scaling == "zscore":
        x, test = _zscore(x, test)
    print(f"training {kind} on {x.shape[0]} pseudo-bulks x {x.shape[1]} genes", flush=True)
    pred = _train_mlp(kind, x, y, test, seed, epochs, batch_size, lr, recon if kind == "tape" else None, tape_dropout)
    out = pd.DataFrame(normalise_rows(pred), index=bulk.columns, columns=types)
    out.attrs["marker_genes"] = list(reference.var_names.astype(str)[ref_pos][genes])
    return out
