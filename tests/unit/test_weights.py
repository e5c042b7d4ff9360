"""Weights carry their genes and settings (vae.pth.json, b2s.model.weights): checks, reordering, stdlib-only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from b2s.errors import InputError
from b2s.model.vae import BetaVAE, load_weights
from b2s.model.weights import check_weights, read_sidecar, sidecar_path, write_sidecar
from tests.helpers import load_script, pipeline_args, write_bulk_inputs

BIN = Path(__file__).resolve().parents[2] / "bin"
N_GENES, LATENT = 40, 8
GENES = [f"gene{i}" for i in range(N_GENES)]


def _weights(tmp_path: Path, genes: list[str] = GENES, sidecar: bool = True) -> Path:
    torch.manual_seed(0)
    pth = tmp_path / "vae.pth"
    torch.save(BetaVAE(len(genes), LATENT).state_dict(), pth)
    if sidecar:
        write_sidecar(pth, genes, LATENT, {"engine": "native", "reparam": "standard"})
    return pth


def test_sidecar_round_trip_and_same_order(tmp_path):
    pth = _weights(tmp_path)
    assert sidecar_path(pth) == f"{pth}.json"
    meta = read_sidecar(pth)
    assert meta["genes"] == GENES and meta["n_genes"] == N_GENES and meta["hidden_size"] == LATENT
    assert check_weights(pth, GENES, LATENT) is None
    assert check_weights(f"{pth}.json", None, LATENT) is None  # preflight: no genes yet


def test_other_order_is_reordered_to_the_same_model(tmp_path, capsys):
    pth = _weights(tmp_path)
    perm = np.random.default_rng(1).permutation(N_GENES)
    genes = [GENES[i] for i in perm]
    index = check_weights(pth, genes, LATENT)
    assert index == perm.tolist() and "another order" in capsys.readouterr().err
    plain = load_weights(pth, N_GENES, LATENT)
    moved = load_weights(pth, N_GENES, LATENT, gene_index=index)
    x = torch.rand(5, N_GENES)
    with torch.no_grad():
        mu_a, _ = plain.encode(x)
        mu_b, _ = moved.encode(x[:, perm])  # the same cells with their genes in the run's order
        assert torch.allclose(mu_a, mu_b, atol=1e-5)
        assert torch.allclose(plain.decode(mu_a)[:, perm], moved.decode(mu_b), atol=1e-5)


@pytest.mark.parametrize("genes, hidden, fragment", [
    (GENES[:-1] + ["OTHER"], LATENT, "1 not in the weights, e.g. OTHER; 1 only in the weights, e.g. gene39"),
    (GENES[:-2], LATENT, "trained on 40 genes, this run's model input has 38"),
    (GENES, LATENT + 1, f"has hidden_size {LATENT}, --hidden_size is {LATENT + 1}; pass --hidden_size {LATENT}"),
])
def test_genes_or_sizes_that_do_not_fit_are_one_line(tmp_path, genes, hidden, fragment):
    pth = _weights(tmp_path)
    with pytest.raises(InputError) as err:
        check_weights(pth, genes, hidden)
    msg = str(err.value)
    assert fragment in msg and str(pth) in msg and "\n" not in msg


def test_stale_or_broken_sidecar_and_no_sidecar(tmp_path, capsys):
    pth = _weights(tmp_path)
    torch.save(BetaVAE(N_GENES, LATENT).state_dict(), pth)  # replaced weights, old sidecar
    with pytest.raises(InputError, match="differs from the one its sidecar"):
        check_weights(pth, GENES)
    Path(f"{pth}.json").write_text("{not json")
    with pytest.raises(InputError, match="sidecar cannot be read"):
        check_weights(pth, GENES)
    Path(f"{pth}.json").unlink()
    assert check_weights(pth, GENES) is None
    assert "gene order cannot be verified" in capsys.readouterr().err


def test_weights_module_needs_no_torch(tmp_path):
    pth = _weights(tmp_path)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; sys.modules['pandas'] = None\n"
            f"sys.path.insert(0, {str(BIN)!r})\n"
            "from b2s.model.weights import check_weights\n"
            f"print(check_weights({str(pth)!r}, None, {LATENT}))")
    res = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "None", res.stderr


def test_train_writes_the_sidecar_and_generate_reorders(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(60, N_GENES, density=0.4, format="csr", random_state=0, dtype=np.float32)
    X.data = np.log1p(rng.poisson(3, X.nnz) + 1).astype(np.float32)
    obs = pd.DataFrame({"celltype": pd.Categorical(np.repeat(["A", "B"], 30))}, index=[f"c{i}" for i in range(60)])
    mi = tmp_path / "model_input.h5ad"
    anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(mi)
    load_script("bin/train_vae.py").main(pipeline_args("TRAIN_VAE") + [
        "--input", str(mi), "--checkpoint_dir", "", "--hidden_size", str(LATENT), "--epoch_num", "2",
        "--device", "cpu", "--outdir", str(tmp_path / "train")])
    pth = tmp_path / "train" / "vae.pth"
    meta = json.loads(Path(f"{pth}.json").read_text())
    assert meta["genes"] == GENES and meta["engine"] == "native" and meta["hidden_size"] == LATENT
    targets = tmp_path / "cell_targets.csv"
    pd.DataFrame([("g1", "A", 0.5, 5), ("g1", "B", 0.5, 4)],
                 columns=["group", "celltype", "fraction", "n_cells"]).to_csv(targets, index=False)
    gen = load_script("bin/generate.py")
    bulk, groups = write_bulk_inputs(tmp_path, anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES)),
                                     groups=("g1",))  # one group: no bulk shift
    base = pipeline_args("GENERATE") + ["--bulk", bulk, "--groups", groups, "--weights", str(pth), "--targets", str(targets), "--group", "g1", "--hidden_size", str(LATENT),
            "--device", "cpu", "--counts", "none"]
    gen.main(base + ["--input", str(mi), "--outdir", str(tmp_path / "a")])
    # the same reference with its genes in another order: reordered weights, the same cells
    perm = rng.permutation(N_GENES)
    mi2 = tmp_path / "shuffled.h5ad"
    anndata.AnnData(X=X[:, perm], obs=obs, var=pd.DataFrame(index=[GENES[i] for i in perm])).write_h5ad(mi2)
    gen.main(base + ["--input", str(mi2), "--outdir", str(tmp_path / "b")])
    a = anndata.read_h5ad(tmp_path / "a" / "g1.generated.h5ad")
    b = anndata.read_h5ad(tmp_path / "b" / "g1.generated.h5ad")
    assert np.allclose(a[:, b.var_names].X.toarray(), b.X.toarray(), atol=1e-5)


def test_head_node_parameter_check_reads_the_sidecar(tmp_path):
    """bin/validate_params.py (before any task) refuses weights whose sidecar says another --hidden_size."""
    from tests.unit.test_params import SCHEMA_PATH, good_params

    pth = _weights(tmp_path)
    params = tmp_path / "params.json"
    for hidden, rc in ((LATENT, 0), (LATENT + 1, 2)):
        params.write_text(json.dumps(good_params(vae_weights=str(pth), hidden_size=hidden)))
        res = subprocess.run([sys.executable, str(BIN / "validate_params.py"), "--schema", str(SCHEMA_PATH),
                              "--params-json", str(params)], capture_output=True, text=True, timeout=120)
        assert res.returncode == rc, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"ERROR: --vae_weights {pth} has hidden_size {LATENT}, --hidden_size is {LATENT + 1}; pass --hidden_size {LATENT}"]
    Path(f"{pth}.json").unlink()  # weights without a sidecar: a warning the head node shows
    params.write_text(json.dumps(good_params(vae_weights=str(pth), hidden_size=LATENT)))
    res = subprocess.run([sys.executable, str(BIN / "validate_params.py"), "--schema", str(SCHEMA_PATH),
                          "--params-json", str(params)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr.startswith(f"WARN: --vae_weights {pth}: no sidecar"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
