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
from b2s.generate.cells import generate_cells
from b2s.model.vae import BetaVAE, constant_decoder_vae
from tests.helpers import load_script, pipeline_args, write_bulk_inputs

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
    kw = dict(hidden_size=LATENT, device="cpu", batch_size=16, decode="sample")  # the seed's posterior draws
    a = generate_cells(model, model_input, targets, seed=1, **kw)
    assert a.obs["celltype"].value_counts().to_dict() == targets
    assert list(a.obs["celltype"].cat.categories) == ["NK", "T", "B"]
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32 and a.shape == (59, N_GENES)
    assert a.X.data.min() >= 0 and a.X.nnz < a.shape[0] * a.shape[1]  # ReLU zeros are not stored
    assert a.obs_names.is_unique and a.obs_names[0] == "cell_0"
    assert list(a.var_names) == list(model_input.var_names)
    b = generate_cells(model.state_dict(), model_input, targets, seed=1, **kw)
    assert (a.X != b.X).nnz == 0  # same seed: identical matrix (state dict or model alike)
    c = generate_cells(model, model_input, targets, seed=2, **kw)
    assert (a.X != c.X).nnz > 0


def test_cycles_over_reference_cells_of_the_type(model, model_input):
    m = _noiseless(model)
    out = generate_cells(m, model_input, {"B": 12}, hidden_size=LATENT, seed=0, device="cpu", decode="sample")
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
    bulk, groups = write_bulk_inputs(tmp_path, model_input, groups=("ctrl",))  # one group: no bulk shift
    base = pipeline_args("GENERATE") + ["--bulk", bulk, "--groups", groups,
            "--input", str(mi), "--weights", str(weights), "--targets", str(targets),
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
    from b2s.generate.cells import group_seed

    assert group_seed(42, "ctrl") == group_seed(42, "ctrl")
    assert group_seed(42, "ctrl") != group_seed(42, "stim")
    assert group_seed(42, "ctrl") != group_seed(43, "ctrl")


def _with_counts(model_input: anndata.AnnData, seed: int = 0) -> anndata.AnnData:
    """The fixture with raw counts (layers['counts']) and libraries consistent with its X."""
    rng = np.random.default_rng(seed)
    n = model_input.n_obs
    lib = rng.integers(800, 1600, n).astype(np.float64)
    counts = sp.csr_matrix(rng.poisson(np.expm1(model_input.X.toarray()) * 3).astype(np.float32))
    out = model_input.copy()
    out.layers["counts"] = counts
    out.obs["total_counts"] = np.maximum(lib, np.asarray(counts.sum(axis=1)).ravel())
    x = counts.multiply(1e4 / out.obs["total_counts"].to_numpy()[:, None]).tocsr()
    x.data = np.log1p(x.data)
    out.X = x.astype(np.float32)
    return out


@pytest.mark.parametrize("mode", ["nb", "poisson"])
def test_counts_layer_is_integer_consistent_with_x_and_seeded(model, model_input, mode):
    mi = _with_counts(model_input)
    targets = {"T": 25, "B": 9}
    a = generate_cells(model, mi, targets, hidden_size=LATENT, seed=4, device="cpu", decode="mean", counts=mode)
    c = a.layers["counts"]
    assert sp.isspmatrix_csr(c) and c.dtype == np.float32 and np.array_equal(c.data, np.round(c.data))
    assert (c.data > 0).all()
    # X is log1p(counts / library of the source cell * 1e4)
    lib = a.obs["total_counts"].to_numpy()
    expected = np.log1p(c.toarray() / lib[:, None] * 1e4)
    np.testing.assert_allclose(a.X.toarray(), expected, rtol=1e-5, atol=1e-6)
    # libraries are those of the reference cells cycled over
    rows_b = np.flatnonzero(mi.obs["celltype"].to_numpy() == "B")
    np.testing.assert_array_equal(lib[25:], np.resize(mi.obs["total_counts"].to_numpy()[rows_b], 9))
    b = generate_cells(model, mi, targets, hidden_size=LATENT, seed=4, device="cpu", decode="mean", counts=mode)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0 and (a.X != b.X).nnz == 0
    d = generate_cells(model, mi, targets, hidden_size=LATENT, seed=5, device="cpu", decode="mean", counts=mode)
    assert (a.layers["counts"] != d.layers["counts"]).nnz > 0


def test_calibrated_rates_reproduce_the_reference_means(model, model_input):
    """Per type and gene, the mean rate of the decoded reference cells is their real mean normalised count."""
    from b2s.generate.rates import calibration_from, profile, reference_counts, type_sums

    mi = _with_counts(model_input, seed=1)
    counts, lib = reference_counts(mi)
    labels = mi.obs["celltype"].astype(str).to_numpy()
    types = sorted(set(labels))
    codes = pd.Categorical(labels, categories=types).codes.astype(np.int64)
    cal, base = calibration_from(*type_sums(model, mi, counts, lib, codes, len(types), "mean",
                                            torch.Generator(), torch.device("cpu"), 7))
    with torch.no_grad():
        mu, _ = model.encode(torch.as_tensor(mi.X.toarray()))
        dec = profile(model.decode(mu).numpy())
    norm = counts.toarray() / lib[:, None] * 1e4
    for i, t in enumerate(types):
        rows = codes == i
        ok = dec[rows].sum(0) > 0
        np.testing.assert_allclose((dec[rows] * cal[i] + base[i]).mean(0), norm[rows].mean(0), rtol=1e-5)
        assert (cal[i][~ok] == 0).all() and (base[i][ok] == 0).all()


def test_profile_keeps_each_cells_composition_at_the_normalised_total():
    """Decoded cells are rescaled to sum to 1e4 (as library-normalised real cells), all-zero rows stay 0."""
    from b2s.generate.rates import profile

    block = np.log1p(np.array([[1.0, 3.0, 0.0], [10.0, 30.0, 60.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    out = profile(block)
    np.testing.assert_allclose(out.sum(axis=1), [1e4, 1e4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[0], [2500.0, 7500.0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(out[1] / out[1].sum(), [0.1, 0.3, 0.6], rtol=1e-5)


class _ScaledDecoder(BetaVAE):
    """Decodes every cell to one fixed composition times a total that varies with its latent code."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        comp = torch.linspace(1.0, 2.0, self.n_genes, dtype=z.dtype)
        total = torch.exp(2.3 * torch.tanh(z[:, :1] * 50.0))
        return torch.log1p(total * comp)


def test_generated_libraries_follow_the_source_cells(model, model_input):
    """A generated cell's total is its source cell's library, not the decoder's total.

    Here the model genes are all the genes (lib = row sums), so real normalised cells sum to 1e4
    and so must the generated ones; deep libraries keep the Poisson noise at ~1 %.
    """
    rng = np.random.default_rng(3)
    counts = rng.poisson(np.expm1(model_input.X.toarray()) * 150 + 0.5).astype(np.float32)
    lib = counts.sum(axis=1).astype(np.float64)
    mi = model_input.copy()
    mi.layers["counts"] = sp.csr_matrix(counts)
    mi.obs["total_counts"] = lib
    mi.X = sp.csr_matrix(np.log1p(counts / lib[:, None] * 1e4).astype(np.float32))
    spread = _ScaledDecoder(N_GENES, LATENT)  # same composition in every cell, totals 0.1x-10x
    spread.load_state_dict(model.state_dict())
    out = generate_cells(spread, mi, {"NK": 40, "B": 40}, hidden_size=LATENT, seed=5, device="cpu",
                         counts="poisson")
    ratio = np.asarray(out.layers["counts"].sum(axis=1)).ravel() / out.obs["total_counts"].to_numpy()
    assert np.median(np.abs(ratio - 1)) < 0.05, ratio


def test_dispersion_recovers_nb_overdispersion():
    from b2s.generate.rates import type_dispersion as dispersion

    rng = np.random.default_rng(0)
    n, g, phi = 4000, 6, np.array([0.05, 0.2, 0.5, 1.0, 2.0, 0.01])
    codes = rng.integers(0, 2, n)
    lib = rng.uniform(2000, 6000, n)
    p = np.where(codes[:, None] == 0, 0.002, 0.004) * np.ones(g)
    m = p * lib[:, None]
    x = rng.poisson(rng.gamma(1 / phi, m * phi))
    est = dispersion(sp.csr_matrix(x.astype(np.float64)), lib, codes, 2)
    np.testing.assert_allclose(est, phi, rtol=0.25, atol=0.01)


def test_posterior_mean_decoding_needs_no_noise(model, model_input):
    a = generate_cells(model, model_input, {"NK": 12}, hidden_size=LATENT, seed=1, device="cpu", decode="mean")
    b = generate_cells(model, model_input, {"NK": 12}, hidden_size=LATENT, seed=2, device="cpu", decode="mean")
    assert (a.X != b.X).nnz == 0 and "counts" not in a.layers
    with pytest.raises(InputError, match="--decode"):
        generate_cells(model, model_input, {"NK": 1}, hidden_size=LATENT, device="cpu", decode="median")
    with pytest.raises(InputError, match="--counts"):
        generate_cells(model, model_input, {"NK": 1}, hidden_size=LATENT, device="cpu", counts="zinb")


def test_counts_without_reference_counts_fall_back_to_log_values(model, model_input, capsys):
    out = generate_cells(model, model_input, {"NK": 3}, hidden_size=LATENT, seed=1, device="cpu", counts="nb")
    assert "counts" not in out.layers and "no layers['counts']" in capsys.readouterr().out


def test_vae_identity_tells_a_decoder_that_separates_types_from_one_that_does_not():
    """Decoded type means equal to the reference's: all told apart; one average cell for every type: none."""
    from b2s.generate.rates import vae_identity

    rng = np.random.default_rng(0)
    n = np.array([30.0, 20.0, 25.0, 40.0])
    means = rng.gamma(0.5, 2.0, (4, 300))
    real = means * n[:, None]
    good = vae_identity(real * rng.uniform(0.9, 1.1, real.shape), real, n, list("abcd"))
    assert good["told_apart"] == 4 and good["median_margin"] > 0.3 and good["not_told_apart"] == []
    avg = np.tile(means.mean(axis=0), (4, 1)) * rng.uniform(0.99, 1.01, (4, 300)) * n[:, None]
    bad = vae_identity(avg, real, n, list("abcd"))
    assert bad["told_apart"] <= 1 and abs(bad["median_margin"]) < 0.2


def test_generated_cells_record_the_vaes_own_identity(model, model_input):
    import json

    from b2s.qc.metrics import vae_identity_of

    out = generate_cells(model, _with_counts(model_input), {"NK": 5, "B": 5}, hidden_size=LATENT, seed=1,
                         device="cpu")
    rec = json.loads(out.uns["vae_identity"])
    assert rec["n_types"] == model_input.obs["celltype"].nunique() and 0 <= rec["told_apart"] <= rec["n_types"]
    m = vae_identity_of(out)
    assert m["vae_celltypes_identified"] == rec["told_apart"] and m["vae_celltypes_assessed"] == rec["n_types"]
    assert vae_identity_of(anndata.AnnData(np.zeros((2, 2)))) is None


def test_a_rate_model_computed_once_gives_each_group_the_same_cells(model, model_input):
    """GENERATE computes the rate model once per batch of groups (posterior mean: no seed in it);
    each group's cells are then exactly those of a run that computes it itself."""
    from b2s.generate.rates import rate_model

    mi = _with_counts(model_input)
    kw = dict(hidden_size=LATENT, device="cpu", batch_size=16)
    rates = rate_model(model, mi, batch_size=16, hidden_size=LATENT, seed=123)  # the seed does not matter
    for seed, targets in ((1, {"T": 9, "B": 4}), (2, {"NK": 6})):
        own = generate_cells(model, mi, targets, seed=seed, **kw)
        shared = generate_cells(model, mi, targets, seed=seed, rates=rates, **kw)
        for layer in (shared.X, shared.layers["counts"]):
            ref = own.X if layer is shared.X else own.layers["counts"]
            assert (layer != ref).nnz == 0
        assert shared.uns["vae_identity"] == own.uns["vae_identity"]
    with pytest.raises(ValueError, match="rates were computed for"):
        generate_cells(model, mi, {"T": 3}, calibrate="gene", rates=rates, **kw)


def test_residual_dispersion_is_measured_around_each_cells_own_rate(model_input):
    """The residual NB dispersion equals the moment estimate around each reference cell's own
    calibrated rate (brute force), is close to the pooled per-type one for a decoder that learned
    nothing, and is far smaller for a decoder that reproduces each cell (its own deviations are then
    not drawn a second time as noise)."""
    from b2s.generate.rates import PHI_RANGE, profile, rate_model, reference_counts, type_dispersion

    mi = _with_counts(model_input)
    cts, lib = reference_counts(mi)
    x = cts.toarray()

    def brute(model):
        res = rate_model(model, mi, dispersion="residual")
        with torch.no_grad():
            dec = model.decode(model.encode(torch.as_tensor(mi.X.toarray()))[0]).numpy()
        mu = lib[:, None] * (profile(dec) * res.cal[res.cal_codes] + res.base[res.cal_codes]) / 1e4
        want = np.clip(((x - mu) ** 2 - mu).sum(axis=0) / (mu ** 2).sum(axis=0), *PHI_RANGE)
        np.testing.assert_allclose(res.phi, want, rtol=1e-6, atol=1e-9)
        return res

    class Identity(BetaVAE):  # a "decoder" that knows each cell: it returns the cell's own values
        def encode(self, x):
            return x, torch.full_like(x, -80.0)

        def decode(self, z):
            return z

    flat = brute(constant_decoder_vae(N_GENES, LATENT))
    pooled = type_dispersion(cts, lib, flat.codes, int(flat.codes.max()) + 1)
    expressed = pooled > 1e-3
    assert np.median(np.abs(np.log(flat.phi[expressed] / pooled[expressed]))) < 0.2
    own = brute(Identity(N_GENES, N_GENES)).phi
    assert expressed.any() and np.median(own[expressed]) < 0.5 * np.median(pooled[expressed])
    assert rate_model(constant_decoder_vae(N_GENES, LATENT), mi, dispersion="type").phi == pytest.approx(pooled)


def test_a_vae_over_some_genes_generates_every_model_gene(model_input):
    """A VAE trained on some model genes (--vae_genes) decodes 0 elsewhere; GENERATE gives those
    genes their type's mean rate, so every type's mean normalised counts still follow its reference
    mean on every gene, and another sampling form can be asked for."""
    from b2s.model.vae import GeneSubsetVAE

    mi = _with_counts(model_input)
    genes = np.arange(0, N_GENES, 3)
    torch.manual_seed(1)
    model = GeneSubsetVAE(BetaVAE(len(genes), LATENT), genes, N_GENES)
    targets = {t: 400 for t in COUNTS}
    out = generate_cells(model, mi, targets, seed=3, device="cpu", reparam="omicverse")
    assert out.shape == (3 * 400, N_GENES)
    norm = out.layers["counts"].toarray() / out.obs["total_counts"].to_numpy()[:, None] * 1e4
    ref = mi.layers["counts"].toarray() / mi.obs["total_counts"].to_numpy()[:, None] * 1e4
    for t in COUNTS:
        gen_mean = norm[out.obs["celltype"].to_numpy() == t].mean(axis=0)
        ref_mean = ref[mi.obs["celltype"].to_numpy() == t].mean(axis=0)
        outside = np.setdiff1d(np.arange(N_GENES), genes)
        assert np.corrcoef(gen_mean[outside], ref_mean[outside])[0, 1] > 0.9
