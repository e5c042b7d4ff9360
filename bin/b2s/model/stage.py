"""TRAIN_VAE's stage (``bin/train_vae.py`` parses the command line and calls :func:`run_train`).

Writes vae.pth (state dict, CPU tensors), vae.pth.json (b2s.model.weights), loss_history.csv,
loss_plot.png and train_summary.json (its ``params``: :class:`TrainOptions` as resolved, then
``epoch_num_rule`` where the epochs followed the step budget, and ``weight_decay``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import b2s.model.checkpoint as bckpt
import b2s.model.config as bconfig
import b2s.model.device as bdevice
import b2s.model.train as btrain
from b2s._constants import LOSS_HISTORY_FILE, LOSS_PLOT_FILE, TRAIN_SUMMARY_FILE, VAE_WEIGHTS_FILE
from b2s.errors import InputError
from b2s.files import atomic_write
from b2s.io.artifacts import write_json
from b2s.model.weights import write_sidecar

CHECKPOINT_NAME = "vae_checkpoint.pt"


@dataclass(kw_only=True)
class TrainOptions:
    """TRAIN_VAE's options, in the order of its command line (which the recorded ``params`` keep).
    None: the engine's default (:func:`resolve_options`; the native ``epoch_num`` follows the step
    budget); ``checkpoint_dir`` None or empty: no checkpoints. The defaults are those of the
    options the pipeline never passes (from :class:`b2s.model.config.TrainConfig`)."""

    input: str
    hidden_size: int
    batch_size: int | None = None
    learning_rate: float | None = None
    epoch_num: int | None = None
    beta: float | None = None
    vae_genes: int | None = None
    patience: int
    seed: int
    device: str
    checkpoint_dir: str | None
    checkpoint_every: int
    log_every: int
    amp: str
    free_bits: float = bconfig.TrainConfig.free_bits
    kl_warmup: int = bconfig.TrainConfig.kl_warmup
    reparam: str = bconfig.TrainConfig.reparam
    engine: str
    outdir: str


def resolve_options(opts: TrainOptions) -> TrainOptions:
    """Unset (None) settings -> the engine's defaults (b2s.model.config.ENGINE_DEFAULTS), checked."""
    unset = {key: value for key, value in bconfig.ENGINE_DEFAULTS[opts.engine].items()
             if getattr(opts, key) is None}
    opts = replace(opts, **unset)  # the native epoch_num stays None: it follows the step budget
    if opts.engine == "omicverse" and opts.vae_genes:
        raise InputError(f"--vae_genes {opts.vae_genes} needs --engine native (omicverse's trainer models every "
                         "model gene); pass --vae_genes 0 or drop it")
    return opts


def save_weights(state: dict, path: str) -> None:
    """``torch.save(state, path)`` through :func:`b2s.files.atomic_write`, with the bytes of a save to
    ``<path>.tmp``: torch names the archive inside the file after the file it writes (``vae.pth/data.pkl``;
    ``archive/...`` for a file object), so ``state`` is saved as ``<name>.tmp`` in a private folder
    beside ``path`` and that file becomes atomic_write's temporary."""
    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=tmp.name) as folder:
            staged = Path(folder) / (Path(path).name + ".tmp")
            torch.save(state, staged)
            os.replace(staged, tmp)

    atomic_write(path, write)


def run_train(opts: TrainOptions) -> None:
    """Train, then write the four TRAIN_VAE outputs."""
    opts = resolve_options(opts)
    os.makedirs(opts.outdir, exist_ok=True)
    ckpt = None
    if opts.checkpoint_dir:
        try:
            os.makedirs(opts.checkpoint_dir, exist_ok=True)
        except OSError as err:
            raise InputError(f"--checkpoint_dir {opts.checkpoint_dir} cannot be created ({err.strerror}); pass a writable folder") from None
        ckpt = os.path.join(opts.checkpoint_dir, CHECKPOINT_NAME)
    history_path = os.path.join(opts.outdir, LOSS_HISTORY_FILE)
    adata = btrain.read_model_input(opts.input)
    epoch_num_rule = None
    if opts.epoch_num is None:
        opts = replace(opts, epoch_num=bconfig.default_epochs(adata.n_obs, opts.batch_size))
        epoch_num_rule = f"about {bconfig.NATIVE_STEPS} optimizer steps (--epoch_num unset)"
        print(f"--epoch_num unset: {opts.epoch_num} epochs, about {bconfig.NATIVE_STEPS} optimizer steps of "
              f"{opts.batch_size} of the {adata.n_obs} cells (native default)", flush=True)
    config = bconfig.TrainConfig(
        hidden_size=opts.hidden_size,
        batch_size=opts.batch_size,
        learning_rate=opts.learning_rate,
        epoch_num=opts.epoch_num,
        patience=opts.patience,
        seed=opts.seed,
        device=opts.device,
        checkpoint_path=ckpt,
        checkpoint_every=opts.checkpoint_every,
        log_every=opts.log_every,
        history_path=history_path,
        amp=opts.amp,
        free_bits=opts.free_bits,
        kl_warmup=opts.kl_warmup,
        reparam=opts.reparam,
        vae_genes=opts.vae_genes,
        beta=opts.beta,
    )
    config.validate()
    device = bdevice.resolve_device(opts.device)  # fail fast on --device cuda without a GPU
    if device.type == "cpu":
        where = f"{device} ({bdevice.cpu_threads()} threads)"
    else:
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    print(
        f"training beta-VAE ({opts.engine}) on {adata.n_obs} cells x {adata.n_vars} genes; device {where}",
        flush=True,
    )
    if opts.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: omicverse takes long to import

        result = omicverse_engine.train_vae(adata, config)  # it needs obs['celltype'] for Bulk2Single
    else:
        result = btrain.train_vae(adata.X, config)

    weights = os.path.join(opts.outdir, VAE_WEIGHTS_FILE)
    save_weights({k: v.detach().cpu() for k, v in result.state_dict.items()}, weights)
    # the genes and settings the weights belong to, readable without torch (b2s.model.weights)
    import b2s

    genes = adata.var_names if result.genes is None else adata.var_names[result.genes]
    write_sidecar(weights, list(genes), opts.hidden_size, {
        "gene_subset": result.genes is not None, "n_model_genes": int(adata.n_vars),
        "engine": opts.engine, "reparam": opts.reparam, "free_bits": opts.free_bits, "kl_warmup": opts.kl_warmup,
        "seed": opts.seed, "epoch_num": opts.epoch_num, "patience": opts.patience,
        "epochs_run": int(result.epochs_run), "best_epoch": int(result.best_epoch),
        "trainer_code": bckpt.trainer_code_version() if opts.engine == "native" else None,
        "b2s_version": b2s.__version__, "torch": str(torch.__version__),
    })
    btrain.write_history(result.history, history_path)
    from b2s.plots import plot_loss

    plot_loss(result.history, os.path.join(opts.outdir, LOSS_PLOT_FILE), best_epoch=result.best_epoch)
    params = asdict(opts)
    if epoch_num_rule is not None:
        params["epoch_num_rule"] = epoch_num_rule
    params["weight_decay"] = config.weight_decay
    summary = {
        "device": result.device,
        "epochs_run": int(result.epochs_run),
        "best_epoch": int(result.best_epoch),
        "best_loss": float(result.best_loss),
        "seconds": round(float(result.seconds), 3),
        "resumed_from": result.resumed_from,
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "extra": {k: v for k, v in (getattr(result, "extra", None) or {}).items() if k != "config"},
        "params": params,
    }
    write_json(os.path.join(opts.outdir, TRAIN_SUMMARY_FILE), summary)
    print(f"wrote {weights} (best epoch {result.best_epoch}, device {result.device})", flush=True)
