"""Each type's generated cells take that type's calibration (b2s.generate.cells, --counts nb, --calibrate type)."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from b2s.generate.cells import generate_cells
from b2s.model.vae import BetaVAE

N_GENES, LATENT = 40, 4
TYPES = {"T": 50, "B": 30, "NK": 20}


class _ConstantDecoder(BetaVAE):
    """Decodes every cell, of any type, to the same profile: all type identity must come from the calibration."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        prof = torch.linspace(0.5, 2.0, self.n_genes, dtype=z.dtype)
        return torch.log1p(prof).expand(z.shape[0], -1).clone()


def _reference() -> anndata.AnnData:
    """Three types with clearly different mean profiles; raw counts, libraries and log-normalised X."""
    rng = np.random.default_rng(2)
    prof = {t: rng.gamma(0.7, 1.0, N_GENES) for t in TYPES}
    labels = rng.permutation(np.concatenate([[t] * n for t, n in TYPES.items()]))
    p = np.vstack([prof[t] / prof[t].sum() for t in labels])
    lib = rng.uniform(2000, 5000, len(labels))
    counts = rng.poisson(p * lib[:, None]).astype(np.float32)
    total = counts.sum(axis=1).astype(np.float64)
    x = np.log1p(counts / total[:, None] * 1e4).astype(np.float32)
    out = anndata.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame({"celltype": pd.Categorical(labels)},
                                                                 index=[f"c{i}" for i in range(len(labels))]),
                          var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
    out.layers["counts"] = sp.csr_matrix(counts)
    out.obs["total_counts"] = total
    return out


def test_each_type_takes_its_own_calibration_with_a_decoder_identical_for_every_type():
    """With the same decoded profile for every type, each type's mean normalised counts
    (counts / total_counts * 1e4, many cells) equal that type's reference mean, not another type's."""
    mi = _reference()
    torch.manual_seed(0)
    model = _ConstantDecoder(N_GENES, LATENT)
    n = 4000
    out = generate_cells(model, mi, {t: n for t in TYPES}, hidden_size=LATENT, seed=3, device="cpu", counts="nb")
    norm = out.layers["counts"].toarray() / out.obs["total_counts"].to_numpy()[:, None] * 1e4
    ref_norm = mi.layers["counts"].toarray() / mi.obs["total_counts"].to_numpy()[:, None] * 1e4
    gen_labels = out.obs["celltype"].astype(str).to_numpy()
    ref_labels = mi.obs["celltype"].astype(str).to_numpy()
    ref_means = {t: ref_norm[ref_labels == t].mean(axis=0) for t in TYPES}
    for t in TYPES:
        got = norm[gen_labels == t].mean(axis=0)
        want = ref_means[t]
        # sampling error of a mean over n NB cells: about 0.5 % where the mean is >= 50 per 1e4
        big = want >= 50
        assert big.sum() >= 10
        np.testing.assert_allclose(got[big], want[big], rtol=0.03, err_msg=t)
        # and closer to its own reference type than to any other
        dist = {u: np.abs(np.log1p(got) - np.log1p(m)).mean() for u, m in ref_means.items()}
        assert min(dist, key=dist.get) == t, dist
