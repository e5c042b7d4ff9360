"""Trainer for the beta-VAE: device choice, seeded mini-batches, early stopping, atomic checkpoints, resume.

Behaviour follows omicverse 2.3.2's ``train_vae`` (design.md section 2): AdamW (lr 1e-4, weight decay
5e-4, betas 0.9/0.999), shuffled batches of 512 (last one partial), loss ``MSE + beta * KL`` with
beta 4; the epoch loss is the SUM of the per-batch mean losses; the best epoch (strictly lower
summed loss) is kept and training stops after ``patience`` consecutive epochs without improvement.

Differences made for speed, none of which changes the model or the loss:
- the whole model input lives in one tensor on the device (a CSR triplet when the input is
  sparse, densified per batch with a vectorised scatter), batches are index-selected from a
  ``torch.randperm`` permutation: no Dataset/DataLoader, no per-sample Python;
- losses are accumulated in a device tensor and synchronised once per epoch (no ``.item()`` per batch);
- the best weights are copied into preallocated tensors (no ``deepcopy`` of the model);
- fused AdamW where torch offers it.

Reproducibility: initial weights come from ``seed``; shuffling uses a CPU ``torch.Generator``
and sampling noise a device generator, both seeded from ``seed`` and saved in checkpoints, so a
run resumed from a checkpoint ends with bit-identical weights to an uninterrupted one (same device).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from b2s._constants import CELLTYPE
from b2s.errors import InputError, warn
from b2s.files import atomic_write, stale_temporaries
from b2s.model.checkpoint import load_checkpoint, numpy_state, run_fingerprint, save_atomic, set_numpy_state
from b2s.model.config import HISTORY_COLUMNS, TrainConfig, TrainResult
from b2s.model.device import DeviceMatrix, cpu_threads, resolve_amp, resolve_device
from b2s.model.vae import BetaVAE, GeneSubsetVAE, vae_loss, variable_genes

if TYPE_CHECKING:
    import anndata


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as omicverse; the fused kernel (one pass over all parameters) where torch has it."""
    kwargs = dict(lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.999))
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), **kwargs)


def write_history(history: pd.DataFrame, path: str) -> None:
    """Write ``epoch,loss,recon,kl`` atomically."""
    atomic_write(path, lambda tmp: history.to_csv(tmp, index=False))


def _history_frame(rows: list[list[float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    df["epoch"] = df["epoch"].astype(int)
    return df


def train_vae(X: Any, config: TrainConfig) -> TrainResult:
    """Train the beta-VAE on ``X`` (cells x genes, log-normalised; scipy CSR or ndarray).

    Prints progress every ``config.log_every`` epochs, checkpoints every ``config.checkpoint_every``
    epochs (and when training ends) if ``config.checkpoint_path`` is set, and resumes from a
    matching checkpoint. Returns the best epoch's weights and the loss history.
    """
    config.validate()
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    n_cells, n_genes = (int(s) for s in X.shape)
    if n_cells < 1 or n_genes < 1:
        raise InputError(f"model input has shape {n_cells} x {n_genes}; it needs cells and genes")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())

    fingerprint = run_fingerprint(X, config, device)
    genes = variable_genes(X, int(config.vae_genes))
    if len(genes) < n_genes:
        print(f"the VAE models the {len(genes)} most variable of {n_genes} model genes (--vae_genes "
              f"{config.vae_genes}); the others take their cell type's mean rate in GENERATE", flush=True)
        X = X[:, genes]
        n_genes = len(genes)
    data = DeviceMatrix(X, device)

    # Initial weights from the seed, without touching the global torch RNG. Built on the CPU so
    # the same seed gives the same start on any device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = BetaVAE(n_genes, config.hidden_size, config.reparam)
    model.to(device).train()
    optimizer = _make_optimizer(model, config)
    shuffle_gen = torch.Generator(device="cpu").manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)

    amp_dtype = resolve_amp(config.amp, device)
    print(f"precision: {'fp32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.') + ' autocast'} "
          f"(--amp {config.amp})", flush=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # Best weights live in preallocated tensors; `live` are views of the parameters' storage.
    live = model.state_dict()
    best = {k: torch.empty_like(v) for k, v in live.items()}
    best_loss, best_epoch, wait, start_epoch, stopped = math.inf, 0, 0, 0, False
    history: list[list[float]] = []
    resumed_from: int | None = None

    ckpt_path = config.checkpoint_path
    if ckpt_path:
        os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
        for stale in stale_temporaries(ckpt_path):  # left by a task killed mid-write
            with contextlib.suppress(OSError):
                os.remove(stale)
        ckpt = load_checkpoint(ckpt_path, fingerprint, device, config.epoch_num)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            for k, v in ckpt["best"].items():
                best[k].copy_(v)
            best_loss, best_epoch, wait = float(ckpt["best_loss"]), int(ckpt["best_epoch"]), int(ckpt["wait"])
            start_epoch, stopped = int(ckpt["epoch"]), bool(ckpt["stopped"])
            # generator states are CPU byte tensors whatever the generator's device
            shuffle_gen.set_state(ckpt["shuffle_rng"].cpu())
            noise_gen.set_state(ckpt["noise_rng"].cpu())
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            set_numpy_state(ckpt["numpy_rng"])
            history = [list(r) for r in ckpt["history"].tolist()]
            resumed_from = start_epoch
            warn(f"resuming from epoch {start_epoch} of {config.epoch_num} (checkpoint {ckpt_path}: same data, "
                 "settings and trainer code, so the result equals an uninterrupted run)")

    def save_checkpoint(epochs_done: int, done: bool) -> None:
        if ckpt_path:
            save_atomic(
                {
                    "fingerprint": fingerprint,
                    "epoch": epochs_done,
                    "stopped": done,  # early-stopped: a rerun only reloads the result
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best": best,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "wait": wait,
                    "shuffle_rng": shuffle_gen.get_state(),
                    "noise_rng": noise_gen.get_state(),
                    "numpy_rng": numpy_state(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "history": torch.tensor(history, dtype=torch.float64).reshape(-1, len(HISTORY_COLUMNS)),
                },
                ckpt_path,
            )
        if config.history_path:
            write_history(_history_frame(history), config.history_path)

    bs = int(config.batch_size)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )
    epoch = start_epoch
    t_train = time.perf_counter()
    # A checkpoint taken at the epoch limit continues when --epoch_num is raised.
    while not stopped and epoch < config.epoch_num:
        beta = config.beta_at(epoch + 1)
        perm_cpu = torch.randperm(n_cells, generator=shuffle_gen)
        perm = perm_cpu.to(device, non_blocking=True)
        perm_np = perm_cpu.numpy()
        acc.zero_()
        for start in range(0, n_cells, bs):
            xb = data.batch(perm[start:start + bs], perm_np[start:start + bs])
            with autocast():
                x_hat, mu, logvar = model(xb, noise_gen)
            loss, recon, kl = vae_loss(x_hat.float(), xb, mu.float(), logvar.float(), beta, config.free_bits)
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            acc += torch.stack((loss.detach(), recon.detach(), kl.detach())).to(torch.float64)
        epoch += 1
        loss_sum, recon_sum, kl_sum = acc.tolist()  # the one sync per epoch
        if not math.isfinite(loss_sum):
            raise InputError(
                f"training diverged at epoch {epoch} (loss {loss_sum}); check the model input for extreme "
                "values (it must be log-normalised) or lower --learning_rate"
            )
        history.append([epoch, loss_sum, recon_sum, kl_sum])
        # during a KL warm-up beta rises, so losses of different epochs are not comparable: the
        # latest epoch counts as the best until beta reaches its final value
        if loss_sum < best_loss or epoch < config.kl_warmup:
            best_loss, best_epoch, wait = loss_sum, epoch, 0
            for k, v in live.items():
                best[k].copy_(v)
        else:
            wait += 1
        stop = wait >= config.patience
        if epoch % config.log_every == 0 or epoch == start_epoch + 1 or stop or epoch == config.epoch_num:
            print(
                f"epoch {epoch}/{config.epoch_num} loss={loss_sum:.6f} recon={recon_sum:.6f} kl={kl_sum:.6f} "
                f"best={best_loss:.6f} ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        if stop:
            print(f"early stopping at epoch {epoch}: no improvement for {config.patience} epochs", flush=True)
        stopped = stop
        if stop or epoch >= config.epoch_num or epoch % config.checkpoint_every == 0:
            save_checkpoint(epoch, stop)
    if config.history_path:  # also covers a resume from an already finished checkpoint
        write_history(_history_frame(history), config.history_path)
    train_seconds = time.perf_counter() - t_train
    epochs_here = epoch - start_epoch
    seconds = time.perf_counter() - t0
    print(
        f"best epoch {best_epoch} loss={best_loss:.6f} (epochs run {epoch}, device {device}, {seconds:.1f} s)",
        flush=True,
    )
    return TrainResult(
        state_dict={k: v.detach().cpu().clone() for k, v in best.items()},
        history=_history_frame(history),
        best_epoch=best_epoch,
        best_loss=best_loss,
        epochs_run=epoch,
        device=str(device),
        seconds=seconds,
        resumed_from=resumed_from,
        genes=genes if len(genes) < fingerprint["shape"][1] else None,
        extra={
            "seconds_per_epoch": train_seconds / epochs_here if epochs_here else None,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "input_storage": "sparse" if data.sparse else "dense",
            "precision": "fp32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} autocast",
            "config": asdict(config),
        },
    )


def trained_model(result: TrainResult, config: TrainConfig, n_model_genes: int) -> BetaVAE:
    """The trained VAE as GENERATE sees it: a :class:`~b2s.model.vae.GeneSubsetVAE` over the model input
    when it was trained on some genes only (``--vae_genes``), else a plain BetaVAE."""
    n = len(result.genes) if result.genes is not None else n_model_genes
    model = BetaVAE(n, config.hidden_size, config.reparam)
    model.load_state_dict(result.state_dict)
    return model if result.genes is None else GeneSubsetVAE(model, result.genes, n_model_genes)


def read_model_input(path: str, need_celltype: bool = False) -> anndata.AnnData:
    """Read ``model_input.h5ad`` (PREPROCESS output) with X as CSR float32, checking it can be trained on.

    Raises:
        InputError: missing/unreadable file, empty matrix, non-finite or negative values, or (with
            ``need_celltype``) no ``obs['celltype']``.
    """
    import anndata  # noqa: F811 (lazy: the trainer itself does not need it)

    if not os.path.isfile(path):
        raise InputError(f"--input {path} does not exist; pass the model_input.h5ad written by PREPROCESS")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:
        raise InputError(
            f"--input {path} is not a readable h5ad file ({type(err).__name__}); pass the model_input.h5ad written by PREPROCESS"
        ) from None
    if adata.n_obs < 1 or adata.n_vars < 1:
        raise InputError(f"--input {path} has {adata.n_obs} cells x {adata.n_vars} genes; it needs both")
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    values = X.data if sp.issparse(X) else X
    if not np.isfinite(values).all():
        raise InputError(f"--input {path} X contains NaN or infinite values; rerun PREPROCESS on clean counts")
    if values.size and values.min() < 0:
        raise InputError(f"--input {path} X has negative values (not log-normalised counts); pass PREPROCESS's model_input.h5ad")
    adata.X = X
    if need_celltype and CELLTYPE not in adata.obs:
        raise InputError(f"--input {path} has no obs['celltype']; pass the model_input.h5ad written by PREPROCESS")
    return adata
