"""Generation: counts per type, cycling over reference cells, determinism, output layout, script errors."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from b2s.errors import InputError
from b2s.generate import generate_cells
from b2s.vae import BetaVAE

from tests.helpers import load_script

BIN = Path(__file__).resolve().parents[2] / "bin"
N_GENES, LATENT = 50, 8
COUNTS = {"T": 30, "B": 5, "NK": 12}


@pytest.fixture(scope="module")
def model_input() -> anndata.AnnData:
    rng = np.random.default_rng(0)
    n = sum(COUNTS.values())
    X = sp.random(n, N_GENES, density=0.4, format="csr", random_state=0, dtype=np.float32)
    X.data = np.log1p(rng.poisson(3, X.nnz) + 1).astype(np.float32)
    labels = np.concatenate([[t] * c for t, c in COUNTS.items()])
    labels = rng.permutation(labels)  # types interleaved, as in a real reference
    obs = pd.DataFrame({"celltype": pd.Categorical(labels)}, index=[f"ref{i}" for i in range(n)])
    return anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)]))


@pytest.fixture(scope="module")
def model() -> BetaVAE:
    torch.manual_seed(0)
    return BetaVAE(N_GENES, LATENT)


def _noiseless(model: BetaVAE) -> BetaVAE:
    """Same model with logvar = -80, so a generated cell is a deterministic function of its reference cell."""
    m = BetaVAE(N_GENES, LATENT)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m.encoder[3].weight[LATENT:] = 0.0
        m.encoder[3].bias[LATENT:] = -80.0
    return m


def test_counts_layout_and_determinism(model, model_input):
    targets = {"NK": 7, "T": 40, "B": 12}  # T and B above the available 30 and 5 cells: cycling
    a = generate_cells(model, model_input, targets, hidden_size=LATENT, seed=1, device="cpu", batch_size=16)
    assert a.obs["celltype"].value_counts().to_dict() == targets
    assert list(a.obs["celltype"].cat.categories) == ["NK", "T", "B"]
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32 and a.shape == (59, N_GENES)
    assert a.X.data.min() >= 0 and a.X.nnz < a.shape[0] * a.shape[1]  # ReLU zeros are not stored
    assert a.obs_names.is_unique and a.obs_names[0] == "cell_0"
    assert list(a.var_names) == list(model_input.var_names)
    b = generate_cells(model.state_dict(), model_input, targets, hidden_size=LATENT, seed=1, device="cpu", batch_size=16)
    assert (a.X != b.X).nnz == 0  # same seed: identical matrix (state dict or model alike)
    c = generate_cells(model, model_input, targets, hidden_size=LATENT, seed=2, device="cpu", batch_size=16)
    assert (a.X != c.X).nnz > 0


def test_cycles_over_reference_cells_of_the_type(model, model_input):
    m = _noiseless(model)
    out = generate_cells(m, model_input, {"B": 12}, hidden_size=LATENT, seed=0, device="cpu")
    X = out.X.toarray()
    # 5 reference B cells used in order, then again from the first: rows i and i+5 match
    assert np.allclose(X[:7], X[5:12], atol=1e-6)
    ref_rows = np.flatnonzero(model_input.obs["celltype"].to_numpy() == "B")
    with torch.no_grad():
        expected, _, _ = m(torch.as_tensor(model_input.X[ref_rows].toarray()))
    assert np.allclose(X[:5], expected.numpy(), atol=1e-5)
    assert not np.allclose(X[0], X[1])  # distinct reference cells -> distinct generated cells


def test_unknown_type_and_bad_weights(model, model_input):
    with pytest.raises(InputError, match=r"\['DC'\].*not in the model input obs\['celltype'\]"):
        generate_cells(model, model_input, {"T": 3, "DC": 2}, hidden_size=LATENT, device="cpu")
    with pytest.raises(InputError, match=f"trained on 60 genes, model input has {N_GENES}"):
        generate_cells(BetaVAE(60, LATENT).state_dict(), model_input, {"T": 1}, hidden_size=LATENT, device="cpu")



def test_generate_script(tmp_path, model, model_input):
    mi, weights, targets = tmp_path / "model_input.h5ad", tmp_path / "vae.pth", tmp_path / "cell_targets.csv"
    model_input.write_h5ad(mi)
    torch.save(model.state_dict(), weights)
    pd.DataFrame(
        [("ctrl", "T", 0.5, 4), ("ctrl", "B", 0.5, 9), ("treat", "NK", 1.0, 3)],
        columns=["group", "celltype", "fraction", "n_cells"],
    ).to_csv(targets, index=False)
    gen = load_script("bin/generate.py")
    base = ["--input", str(mi), "--weights", str(weights), "--targets", str(targets),
            "--hidden_size", str(LATENT), "--device", "cpu", "--seed", "3", "--outdir", str(tmp_path)]
    gen.main(base + ["--group", "ctrl"])
    out = anndata.read_h5ad(tmp_path / "ctrl.generated.h5ad")
    assert out.obs["celltype"].value_counts().to_dict() == {"T": 4, "B": 9}
    assert out.obs_names[0] == "ctrl_cell_0" and out.obs_names.is_unique
    assert sp.issparse(out.X) and out.X.dtype == np.float32
    assert '"seed": 3' in out.uns["b2s"] and '"group": "ctrl"' in out.uns["b2s"]

    with pytest.raises(InputError, match=r"--group 'other' is not in --targets .* \(groups: ctrl, treat\)"):
        gen.main(base + ["--group", "other"])
    small = tmp_path / "small.pth"
    torch.save(BetaVAE(N_GENES + 1, LATENT).state_dict(), small)
    with pytest.raises(InputError) as err:
        gen.main([a if a != str(weights) else str(small) for a in base] + ["--group", "ctrl"])
    assert str(err.value) == (
        f"--vae_weights {small} was trained on {N_GENES + 1} genes, model input has {N_GENES}; "
        "retrain or pass the model input it was trained on"
    )
    pd.DataFrame([("ctrl", "Mono", 1.0, 2)], columns=["group", "celltype", "fraction", "n_cells"]).to_csv(targets, index=False)
    with pytest.raises(InputError, match=r"cell type\(s\) \['Mono'\] .* not in --input"):
        gen.main(base + ["--group", "ctrl"])


def test_group_seed_is_stable_and_differs_between_groups():
    from b2s.generate import group_seed

    assert group_seed(42, "ctrl") == group_seed(42, "ctrl")
    assert group_seed(42, "ctrl") != group_seed(42, "stim")
    assert group_seed(42, "ctrl") != group_seed(43, "ctrl")
