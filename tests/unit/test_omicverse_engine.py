"""--engine omicverse: every stage through omicverse's public API on the bundled data, in our contract."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import b2s.engines.omicverse as oe
import b2s.io as io
import b2s.io.reference as reference_io
import b2s.preprocess as preprocess
from b2s.errors import InputError
from b2s.model.config import TrainConfig, TrainResult
from b2s.model.vae import BetaVAE

TEST_DATA = Path(__file__).resolve().parents[2] / "assets" / "test_data"

N_CELLS, N_GENES, EPOCHS, HIDDEN = 150, 200, 2, 16


@pytest.fixture(scope="module")
def bundled() -> tuple[pd.DataFrame, anndata.AnnData]:
    bulk = io.read_counts(TEST_DATA / "bulk_counts.tsv.gz")
    ref = reference_io.read_reference(TEST_DATA / "reference.h5ad", "celltype")
    return bulk, ref


@pytest.fixture(scope="module")
def small_input(bundled) -> anndata.AnnData:
    """150 cells x 200 genes of the bundled model input (every type kept)."""
    bulk, ref = bundled
    mi = preprocess.model_input(ref, bulk.index)
    rng = np.random.default_rng(0)
    codes = mi.obs["celltype"].cat.codes.to_numpy()
    first = [np.flatnonzero(codes == c)[0] for c in np.unique(codes)]  # one cell of each type
    rest = rng.choice(np.setdiff1d(np.arange(mi.n_obs), first), N_CELLS - len(first), replace=False)
    cells = np.sort(np.concatenate([first, rest]))
    genes = np.sort(rng.choice(mi.n_vars, N_GENES, replace=False))
    return mi[cells, genes].copy()


@pytest.fixture(scope="module")
def trained(small_input) -> TrainResult:
    cfg = TrainConfig(hidden_size=HIDDEN, epoch_num=EPOCHS, patience=EPOCHS, batch_size=64, seed=7, device="cpu")
    return oe.train_vae(small_input, cfg)


def test_fractions_scaden_contract_and_seeded(bundled):
    bulk, ref = bundled
    kw = dict(epochs=1, pseudobulk_size=64, batch_size=32)
    a = oe.estimate_sample_fractions(bulk, ref, "scaden", seed=3, **kw)
    assert list(a.index) == list(bulk.columns)
    assert list(a.columns) == list(ref.obs["celltype"].cat.categories)
    assert a.index.name == "sample"
    assert (a.to_numpy() >= 0).all()
    np.testing.assert_allclose(a.sum(axis=1).to_numpy(), 1.0, atol=1e-9)
    # omicverse's own target cell numbers are kept for reference, >= 1 per type
    targets = a.attrs["omicverse_cell_target_num"]
    assert set(targets) == set(a.columns) and min(targets.values()) >= 1
    b = oe.estimate_sample_fractions(bulk, ref, "scaden", seed=3, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert ref.obs["celltype"].dtype.name == "category"  # input not modified


def test_fractions_reject_native_only_method(bundled):
    bulk, ref = bundled
    with pytest.raises(InputError, match=r"--method 'nnls' is not available with --engine omicverse"):
        oe.estimate_sample_fractions(bulk, ref, "nnls")


def test_fractions_need_shared_genes(bundled):
    bulk, ref = bundled
    renamed = bulk.rename(index=lambda g: f"X_{g}")
    with pytest.raises(InputError, match="no gene is shared"):
        oe.estimate_sample_fractions(renamed, ref, "scaden")


def test_train_result_contract(trained, small_input):
    assert isinstance(trained, TrainResult)
    assert trained.epochs_run == EPOCHS and trained.device == "cpu"
    h = trained.history
    assert list(h.columns) == ["epoch", "loss", "recon", "kl"]
    assert h["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert np.isfinite(h["loss"]).all() and h["recon"].isna().all()
    assert trained.best_loss == pytest.approx(h["loss"].min())
    assert h["loss"].iloc[trained.best_epoch - 1] == pytest.approx(trained.best_loss)
    sd = trained.state_dict
    assert sd["encoder.0.weight"].shape == (2048, N_GENES)
    assert sd["encoder.3.weight"].shape == (2 * HIDDEN, 512)
    assert sd["decoder.3.weight"].shape == (N_GENES, 2048)
    # omicverse-trained weights load into the native model unchanged (same keys and shapes)
    BetaVAE(N_GENES, HIDDEN).load_state_dict(sd, strict=True)


def test_train_seeded(trained, small_input):
    cfg = TrainConfig(hidden_size=HIDDEN, epoch_num=EPOCHS, patience=EPOCHS, batch_size=64, seed=7, device="cpu")
    again = oe.train_vae(small_input.X, cfg)  # plain matrix input works too
    assert all(torch.equal(trained.state_dict[k], again.state_dict[k]) for k in trained.state_dict)


def test_train_refuses_settings_omicverse_hardcodes(small_input):
    with pytest.raises(InputError, match="--beta 1.0: omicverse's trainer fixes beta=4"):
        oe.train_vae(small_input, TrainConfig(beta=1.0, epoch_num=1, device="cpu"))


def test_generate_and_filter(trained, small_input):
    types = list(small_input.obs["celltype"].cat.categories)
    targets = {t: 12 + i for i, t in enumerate(types)}
    gen = oe.generate_cells(trained.state_dict, small_input, targets, hidden_size=HIDDEN, seed=5, device="cpu")
    assert sp.issparse(gen.X) and gen.X.format == "csr" and gen.X.dtype == np.float32
    assert list(gen.var_names) == list(small_input.var_names)
    assert gen.obs["celltype"].value_counts().reindex(types).tolist() == list(targets.values())
    assert gen.X.min() >= 0  # ReLU decoder
    again = oe.generate_cells(trained.state_dict, small_input, targets, hidden_size=HIDDEN, seed=5, device="cpu")
    assert (gen.X != again.X).nnz == 0

    before = gen.X.copy()
    filt = oe.filter_cells(gen, leiden_size=5, seed=0)
    assert (gen.X != before).nnz == 0  # input untouched
    assert list(filt.var_names) == list(gen.var_names)  # all genes kept, not only HVGs
    assert filt.obsm["X_pca"].shape[0] == filt.n_obs > 0
    assert filt.obs["leiden"].value_counts().min() >= 5
    # X is the generated log-normalised matrix of the kept cells, not omicverse's scaled HVG matrix
    rows = gen.obs_names.get_indexer(filt.obs_names)
    assert (filt.X != gen.X[rows]).nnz == 0
    assert filt.var["highly_variable"].any()


def test_generate_checks_targets_and_weights(trained, small_input):
    types = list(small_input.obs["celltype"].cat.categories)
    with pytest.raises(InputError, match=r"cell types must match model_input.h5ad .*missing: \['"):
        oe.generate_cells(trained.state_dict, small_input, {types[0]: 3}, hidden_size=HIDDEN, device="cpu")
    with pytest.raises(InputError, match="do not fit a model with 200 genes and --hidden_size 32"):
        oe.generate_cells(trained.state_dict, small_input, {t: 1 for t in types}, hidden_size=32, device="cpu")
