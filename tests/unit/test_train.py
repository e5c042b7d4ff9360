"""Trainer: device choice, determinism, early stopping with best-model keeping, checkpoints and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from b2s.errors import InputError
from b2s.model.config import TrainConfig
from b2s.model.device import resolve_device
from b2s.model.train import train_vae
from tests.helpers import load_script, pipeline_args

BIN = Path(__file__).resolve().parents[2] / "bin"
N_CELLS, N_GENES, LATENT = 200, 100, 16


def _data(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(N_CELLS, N_GENES, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    X.data = np.log1p(rng.poisson(3, X.nnz) + 1).astype(np.float32)
    return X


def _cfg(**kw) -> TrainConfig:
    base = dict(hidden_size=LATENT, batch_size=64, epoch_num=2, patience=100, device="cpu", log_every=1000,
                free_bits=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="use auto, cpu or cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cpu"):
            resolve_device("cuda")


def test_config_validation_names_the_parameter():
    with pytest.raises(InputError, match="--batch_size 0"):
        _cfg(batch_size=0).validate()
    with pytest.raises(InputError, match="--learning_rate"):
        _cfg(learning_rate=-1.0).validate()


def test_same_seed_same_weights_and_history(capsys):
    X = _data()
    a = train_vae(X, _cfg())
    b = train_vae(X.toarray(), _cfg())  # dense input takes the dense path: same numbers
    c = train_vae(X, _cfg(seed=7))
    assert _same(a.state_dict, b.state_dict)
    assert a.history.equals(b.history)
    assert not torch.equal(a.state_dict["encoder.0.weight"], c.state_dict["encoder.0.weight"])
    assert list(a.history.columns) == ["epoch", "loss", "recon", "kl"]
    assert a.history["epoch"].tolist() == [1, 2]
    # summed epoch loss = recon + beta * kl summed over batches (4 batches of <= 64 cells)
    assert np.allclose(a.history["loss"], a.history["recon"] + 4.0 * a.history["kl"], rtol=1e-6)
    assert a.history["loss"].iloc[-1] < a.history["loss"].iloc[0]
    out = capsys.readouterr().out
    assert "epoch 1/2 loss=" in out and "best epoch" in out


def test_early_stopping_keeps_best_epoch():
    X = _data()
    # a vanishing learning rate: the summed loss only moves with the sampling noise, so it stops improving
    cfg = _cfg(learning_rate=1e-12, batch_size=N_CELLS, epoch_num=60, patience=3)
    res = train_vae(X, cfg)
    hist = res.history
    assert res.epochs_run < 60
    assert res.epochs_run - res.best_epoch == 3
    assert res.best_loss == hist["loss"].min() == hist["loss"].iloc[res.best_epoch - 1]
    # the returned weights are those after the best epoch: a run stopped there gives the same weights
    prefix = train_vae(X, _cfg(learning_rate=1e-12, batch_size=N_CELLS, epoch_num=res.best_epoch, patience=3))
    assert _same(res.state_dict, prefix.state_dict)


def test_checkpoint_resume_is_bit_identical(tmp_path, capsys):
    X = _data()
    full = train_vae(X, _cfg(epoch_num=5, batch_size=100))
    ckpt = str(tmp_path / "ck" / "vae_checkpoint.pt")
    hist_csv = str(tmp_path / "hist.csv")
    part = train_vae(X, _cfg(epoch_num=3, batch_size=100, checkpoint_path=ckpt, checkpoint_every=2, history_path=hist_csv))
    assert os.path.exists(ckpt) and part.epochs_run == 3
    assert pd.read_csv(hist_csv)["epoch"].tolist() == [1, 2, 3]
    capsys.readouterr()
    # raising epoch_num continues from the checkpoint written at the old limit
    resumed = train_vae(X, _cfg(epoch_num=5, batch_size=100, checkpoint_path=ckpt, checkpoint_every=2, history_path=hist_csv))
    assert "WARNING: resuming from epoch 3" in capsys.readouterr().err
    assert resumed.resumed_from == 3 and resumed.epochs_run == 5
    assert _same(full.state_dict, resumed.state_dict)
    assert np.array_equal(full.history.to_numpy(), resumed.history.to_numpy())
    assert pd.read_csv(hist_csv)["epoch"].tolist() == [1, 2, 3, 4, 5]
    # other settings: the checkpoint is ignored with a warning
    other = train_vae(X, _cfg(epoch_num=1, batch_size=N_CELLS, seed=1, checkpoint_path=ckpt))
    assert other.resumed_from is None
    assert "WARNING: checkpoint" in capsys.readouterr().err


def test_stale_checkpoint_never_changes_the_result(tmp_path, capsys):
    """Issue 12: a finished longer run's checkpoint must not be returned for a shorter request."""
    X = _data()
    ckpt = str(tmp_path / "vae_checkpoint.pt")
    long = train_vae(X, _cfg(epoch_num=6, batch_size=100, checkpoint_path=ckpt))
    fresh = train_vae(X, _cfg(epoch_num=2, batch_size=100))
    capsys.readouterr()
    short = train_vae(X, _cfg(epoch_num=2, batch_size=100, checkpoint_path=ckpt))
    err = capsys.readouterr().err
    assert short.resumed_from is None and short.epochs_run == 2
    assert "WARNING: checkpoint" in err and "beyond --epoch_num 2" in err
    assert _same(short.state_dict, fresh.state_dict) and not _same(short.state_dict, long.state_dict)
    # other patience: ignored too (an early stop would have come at another epoch)
    train_vae(X, _cfg(epoch_num=2, batch_size=100, checkpoint_path=ckpt, patience=5))
    err = capsys.readouterr().err
    assert "patience 100 (now 5)" in err and "resuming" not in err
    # other trainer code: ignored
    import b2s.model.checkpoint as bt

    bt_code = bt.trainer_code_version
    bt.trainer_code_version = lambda: "0" * 16
    try:
        res = train_vae(X, _cfg(epoch_num=2, batch_size=100, checkpoint_path=ckpt))
    finally:
        bt.trainer_code_version = bt_code
    assert res.resumed_from is None and "trainer code" in capsys.readouterr().err


def _write_model_input(path: Path) -> None:
    obs = pd.DataFrame({"celltype": pd.Categorical(np.repeat(["A", "B"], N_CELLS // 2))},
                       index=[f"c{i}" for i in range(N_CELLS)])
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
    anndata.AnnData(X=_data(), obs=obs, var=var).write_h5ad(path)



def test_train_vae_script_defaults_depend_on_the_engine(tmp_path):
    """Unset training settings take the engine's defaults: the native ones, or omicverse's seed values."""
    from b2s.model.config import ENGINE_DEFAULTS

    native, ov = ENGINE_DEFAULTS["native"], ENGINE_DEFAULTS["omicverse"]
    assert ov == {"epoch_num": 3500, "learning_rate": 1e-4, "batch_size": 512, "vae_genes": 0, "beta": 4.0}
    model_input = tmp_path / "model_input.h5ad"
    _write_model_input(model_input)
    script = load_script("bin/train_vae.py")
    script.main(pipeline_args("TRAIN_VAE") + [
                 "--checkpoint_dir", "", "--input", str(model_input), "--hidden_size", str(LATENT), "--epoch_num", "3",
                 "--patience", "1000", "--device", "cpu", "--outdir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    for key in ("learning_rate", "batch_size", "vae_genes", "beta"):
        assert summary["params"][key] == native[key]
    assert summary["epochs_run"] == 3
    from b2s.model.stage import TrainOptions, resolve_options

    def resolved(*argv):
        return resolve_options(TrainOptions(**vars(script.parse_args(
            pipeline_args("TRAIN_VAE") + ["--input", "x", "--checkpoint_dir", "", "--outdir", ".", *argv]))))

    args = resolved()
    assert (args.epoch_num, args.learning_rate, args.batch_size) == (native["epoch_num"], native["learning_rate"],
                                                                   native["batch_size"])
    args = resolved("--engine", "omicverse")
    assert {k: getattr(args, k) for k in ov} == ov
    assert resolved("--epoch_num", "7", "--learning_rate", "0.01").learning_rate == 0.01
    # unset native epochs follow a budget of optimizer steps: a larger reference gets fewer epochs
    from b2s.model.config import NATIVE_STEPS, default_epochs

    assert default_epochs(662, 128) == -(-NATIVE_STEPS // 6) and default_epochs(5000, 128) == -(-NATIVE_STEPS // 40)
    assert default_epochs(10, 128, steps=5) == 5
    with pytest.raises(InputError, match="--vae_genes 10 needs --engine native"):
        resolved("--engine", "omicverse", "--vae_genes", "10")


def test_vae_genes_subset_round_trip(tmp_path):
    """--vae_genes N trains on the N most variable model genes; the sidecar names them, and GENERATE's
    loader maps them back into the model input (decoded 0 elsewhere)."""
    import torch

    from b2s.model.vae import GeneSubsetVAE, load_weights, variable_genes
    from b2s.model.weights import read_sidecar, subset_positions

    model_input = tmp_path / "model_input.h5ad"
    _write_model_input(model_input)
    script = load_script("bin/train_vae.py")
    out = tmp_path / "out"
    script.main(pipeline_args("TRAIN_VAE") + [
                 "--checkpoint_dir", "", "--input", str(model_input), "--hidden_size", str(LATENT), "--epoch_num", "2",
                 "--vae_genes", "7",
                 "--device", "cpu", "--outdir", str(out)])
    adata = anndata.read_h5ad(model_input)
    want = variable_genes(adata.X, 7)
    assert len(want) == 7 and list(want) == sorted(want)
    variances = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X).var(axis=0)
    assert variances[want].min() >= np.delete(variances, want).max()
    side = read_sidecar(out / "vae.pth")
    assert side["gene_subset"] and side["genes"] == list(adata.var_names[want])
    pos = subset_positions(out / "vae.pth", list(adata.var_names))
    assert pos == list(want)
    model = GeneSubsetVAE(load_weights(out / "vae.pth", 7, LATENT), pos, adata.n_vars).eval()
    with torch.no_grad():
        dec = model.decode(torch.randn(4, LATENT))
    assert dec.shape == (4, adata.n_vars)
    assert float(dec[:, np.delete(np.arange(adata.n_vars), want)].abs().sum()) == 0.0
    # all genes: no subset recorded
    script.main(pipeline_args("TRAIN_VAE") + [
                 "--checkpoint_dir", "", "--input", str(model_input), "--hidden_size", str(LATENT), "--epoch_num", "2",
                 "--vae_genes", "0",
                 "--device", "cpu", "--outdir", str(tmp_path / "all")])
    assert subset_positions(tmp_path / "all" / "vae.pth", list(adata.var_names)) is None


def test_train_vae_script_kill_and_resume(tmp_path):
    """A SIGKILLed training task rerun with the same command resumes and ends bit-identical."""
    model_input = tmp_path / "model_input.h5ad"
    _write_model_input(model_input)
    epochs = 10
    common = pipeline_args("TRAIN_VAE") + ["--input", str(model_input), "--hidden_size", str(LATENT), "--batch_size", "100",
              "--epoch_num", str(epochs), "--patience", "1000", "--seed", "3", "--device", "cpu",
              "--checkpoint_every", "2", "--log_every", "5"]

    # uninterrupted reference run (same code path, in-process)
    ref_dir = tmp_path / "ref"
    load_script("bin/train_vae.py").main(common + ["--checkpoint_dir", "", "--outdir", str(ref_dir)])
    summary = json.loads((ref_dir / "train_summary.json").read_text())
    assert summary["epochs_run"] == epochs and summary["device"] == "cpu" and summary["params"]["seed"] == 3
    assert (ref_dir / "loss_plot.png").stat().st_size > 0
    assert len(pd.read_csv(ref_dir / "loss_history.csv")) == epochs

    ck_dir, out_dir = tmp_path / "ck", tmp_path / "out"
    cmd = [sys.executable, str(BIN / "train_vae.py"), *common, "--checkpoint_dir", str(ck_dir), "--outdir", str(out_dir)]
    ckpt = ck_dir / "vae_checkpoint.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    assert not (out_dir / "vae.pth").exists()
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert 2 <= killed_at < epochs

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "WARNING: resuming from epoch" in rerun.stderr
    resumed_from = json.loads((out_dir / "train_summary.json").read_text())["resumed_from"]
    assert resumed_from is not None and resumed_from >= killed_at
    assert _same(torch.load(ref_dir / "vae.pth"), torch.load(out_dir / "vae.pth"))
    assert pd.read_csv(ref_dir / "loss_history.csv").equals(pd.read_csv(out_dir / "loss_history.csv"))


def test_train_vae_script_bad_device_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from b2s.errors import run_cli

    model_input = tmp_path / "model_input.h5ad"
    _write_model_input(model_input)
    script = load_script("bin/train_vae.py")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: script.main(pipeline_args("TRAIN_VAE") + [
            "--input", str(model_input), "--checkpoint_dir", "", "--device", "cuda", "--outdir", str(tmp_path)]))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: --device cuda") and "--device cpu" in lines[0]
    assert not (tmp_path / "vae.pth").exists()


def test_amp_auto_follows_native_bf16_support():
    from b2s.model.device import cpu_has_native_bf16, resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None
    assert resolve_amp("on", cpu) is torch.bfloat16
    assert resolve_amp("auto", cpu) is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(InputError, match="--amp"):
        TrainConfig(amp="fast").validate()


def test_free_bits_warmup_and_reparam_shape_the_loss_and_the_checkpoint(tmp_path, capsys):
    X = _data()
    plain = train_vae(X, _cfg(epoch_num=3))
    fb = train_vae(X, _cfg(epoch_num=3, free_bits=0.5))
    # free bits: the loss charges at least 0.5 nats per latent dim per batch (4 batches), KL reported as is
    floor = 4 * 4.0 * 0.5 * LATENT / N_GENES
    assert (fb.history["loss"] >= fb.history["recon"] + floor - 1e-5).all()  # float32 sums
    assert not np.allclose(fb.history["loss"], fb.history["recon"] + 4.0 * fb.history["kl"])
    assert not _same(plain.state_dict, fb.state_dict)
    again = train_vae(X, _cfg(epoch_num=3, free_bits=0.5))
    assert _same(fb.state_dict, again.state_dict)  # seeded
    cfg = _cfg(kl_warmup=4)
    assert [cfg.beta_at(e) for e in (1, 2, 4, 9)] == [1.0, 2.0, 4.0, 4.0]
    warm = train_vae(X, _cfg(epoch_num=3, kl_warmup=4))
    h = warm.history
    assert np.allclose(h["loss"], h["recon"] + np.array([1.0, 2.0, 3.0]) * h["kl"], rtol=1e-6)
    assert warm.best_epoch == 3  # during the warm-up the latest epoch is kept
    ov = train_vae(X, _cfg(epoch_num=2, reparam="omicverse"))
    assert list(ov.state_dict) == list(plain.state_dict)
    with pytest.raises(InputError, match="--reparam"):
        _cfg(reparam="x").validate()
    with pytest.raises(InputError, match="--free_bits"):
        _cfg(free_bits=-1.0).validate()
    # a checkpoint of other free bits is not resumed
    ckpt = str(tmp_path / "vae_checkpoint.pt")
    train_vae(X, _cfg(epoch_num=2, checkpoint_path=ckpt, free_bits=0.5))
    capsys.readouterr()
    other = train_vae(X, _cfg(epoch_num=2, checkpoint_path=ckpt, free_bits=0.25))
    assert other.resumed_from is None and "WARNING: checkpoint" in capsys.readouterr().err
