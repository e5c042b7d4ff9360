#!/usr/bin/env python3
"""TRAIN_VAE: train the Bulk2Single beta-VAE on the model input (once per run, reused by every group).

Writes vae.pth (state dict, CPU tensors), vae.pth.json (its genes in order and settings,
b2s.model.weights), loss_history.csv, loss_plot.png and train_summary.json into --outdir. With --checkpoint_dir, the full training state is saved every --checkpoint_every
epochs to <dir>/vae_checkpoint.pt and a rerun with the same data and settings resumes from it.
"""

from __future__ import annotations

import argparse
import os

import torch

import b2s.model.checkpoint as bckpt
import b2s.model.config as bconfig
import b2s.model.device as bdevice
import b2s.model.train as btrain
from b2s.errors import InputError, run_cli
from b2s.io.artifacts import write_json
from b2s.model.vae import REPARAM_CHOICES
from b2s.model.weights import write_sidecar

CHECKPOINT_NAME = "vae_checkpoint.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of TRAIN_VAE (docs/architecture.md)."""
    d = bconfig.TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="model_input.h5ad from PREPROCESS")
    p.add_argument("--hidden_size", type=int, default=d.hidden_size, help="latent size (default %(default)s)")
    unset = {k: ", ".join(f"{e} {v[k]}" for e, v in bconfig.ENGINE_DEFAULTS.items())
             for k in bconfig.ENGINE_DEFAULTS["native"]}
    p.add_argument("--batch_size", type=int, default=None, help=f"mini-batch size (default: {unset['batch_size']})")
    p.add_argument("--learning_rate", type=float, default=None, help=f"AdamW rate (default: {unset['learning_rate']})")
    p.add_argument("--epoch_num", type=int, default=None,
                   help=f"maximum epochs (default: native about {bconfig.NATIVE_STEPS} optimizer steps, omicverse "
                        f"{bconfig.ENGINE_DEFAULTS['omicverse']['epoch_num']})")
    p.add_argument("--beta", type=float, default=None,
                   help=f"weight of the KL term (default: {unset['beta']}; omicverse fixes 4)")
    p.add_argument("--vae_genes", type=int, default=None,
                   help=f"most variable model genes inside the VAE, 0 = all (native engine; default: {unset['vae_genes']})")
    p.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda (auto: cuda when available)")
    p.add_argument("--checkpoint_dir", default=None, help="folder for vae_checkpoint.pt (resume); none = no checkpoints")
    p.add_argument("--checkpoint_every", type=int, default=d.checkpoint_every)
    p.add_argument("--log_every", type=int, default=d.log_every)
    p.add_argument("--amp", choices=bdevice.AMP_CHOICES, default=d.amp,
                   help="mixed precision: auto = bf16 autocast where the hardware has native bf16, on, off (fp32)")
    p.add_argument("--free_bits", type=float, default=d.free_bits,
                   help="nats per latent dimension the KL term does not charge (native; default %(default)s)")
    p.add_argument("--kl_warmup", type=int, default=d.kl_warmup,
                   help="epochs of linear KL (beta) warm-up (native; default %(default)s)")
    p.add_argument("--reparam", choices=REPARAM_CHOICES, default=d.reparam,
                   help="latent sampling form: standard (z = mu + eps*std) or omicverse (z = eps + mu*std)")
    p.add_argument("--engine", choices=["native", "omicverse"], default="native")
    p.add_argument("--outdir", default=".")
    args = p.parse_args(argv)
    for key, value in bconfig.ENGINE_DEFAULTS[args.engine].items():
        if getattr(args, key) is None:
            setattr(args, key, value)  # the native epoch_num stays None: it follows the step budget
    if args.engine == "omicverse" and args.vae_genes:
        raise InputError(f"--vae_genes {args.vae_genes} needs --engine native (omicverse's trainer models every "
                         "model gene); pass --vae_genes 0 or drop it")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train, then write the four TRAIN_VAE outputs."""
    args = parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    ckpt = None
    if args.checkpoint_dir:
        try:
            os.makedirs(args.checkpoint_dir, exist_ok=True)
        except OSError as err:
            raise InputError(f"--checkpoint_dir {args.checkpoint_dir} cannot be created ({err.strerror}); pass a writable folder") from None
        ckpt = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
    history_path = os.path.join(args.outdir, "loss_history.csv")
    adata = btrain.read_model_input(args.input)
    if args.epoch_num is None:
        args.epoch_num = bconfig.default_epochs(adata.n_obs, args.batch_size)
        args.epoch_num_rule = f"about {bconfig.NATIVE_STEPS} optimizer steps (--epoch_num unset)"
        print(f"--epoch_num unset: {args.epoch_num} epochs, about {bconfig.NATIVE_STEPS} optimizer steps of "
              f"{args.batch_size} of the {adata.n_obs} cells (native default)", flush=True)
    config = bconfig.TrainConfig(
        hidden_size=args.hidden_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        epoch_num=args.epoch_num,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        checkpoint_path=ckpt,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        history_path=history_path,
        amp=args.amp,
        free_bits=args.free_bits,
        kl_warmup=args.kl_warmup,
        reparam=args.reparam,
        vae_genes=args.vae_genes,
        beta=args.beta,
    )
    config.validate()
    device = bdevice.resolve_device(args.device)  # fail fast on --device cuda without a GPU
    if device.type == "cpu":
        where = f"{device} ({bdevice.cpu_threads()} threads)"
    else:
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    print(
        f"training beta-VAE ({args.engine}) on {adata.n_obs} cells x {adata.n_vars} genes; device {where}",
        flush=True,
    )
    if args.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: omicverse takes long to import

        result = omicverse_engine.train_vae(adata, config)  # it needs obs['celltype'] for Bulk2Single
    else:
        result = btrain.train_vae(adata.X, config)

    weights = os.path.join(args.outdir, "vae.pth")
    torch.save({k: v.detach().cpu() for k, v in result.state_dict.items()}, weights + ".tmp")
    os.replace(weights + ".tmp", weights)
    # the genes and settings the weights belong to, readable without torch (b2s.model.weights)
    import b2s

    genes = adata.var_names if result.genes is None else adata.var_names[result.genes]
    write_sidecar(weights, list(genes), args.hidden_size, {
        "gene_subset": result.genes is not None, "n_model_genes": int(adata.n_vars),
        "engine": args.engine, "reparam": args.reparam, "free_bits": args.free_bits, "kl_warmup": args.kl_warmup,
        "seed": args.seed, "epoch_num": args.epoch_num, "patience": args.patience,
        "epochs_run": int(result.epochs_run), "best_epoch": int(result.best_epoch),
        "trainer_code": bckpt.trainer_code_version() if args.engine == "native" else None,
        "b2s_version": b2s.__version__, "torch": str(torch.__version__),
    })
    btrain.write_history(result.history, history_path)
    from b2s.plots import plot_loss

    plot_loss(result.history, os.path.join(args.outdir, "loss_plot.png"), best_epoch=result.best_epoch)
    params = {k: v for k, v in vars(args).items()}
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
    write_json(os.path.join(args.outdir, "train_summary.json"), summary)
    print(f"wrote {weights} (best epoch {result.best_epoch}, device {result.device})", flush=True)


if __name__ == "__main__":
    run_cli(main)
