#!/usr/bin/env python3
"""TRAIN_VAE: train the Bulk2Single beta-VAE on the model input (once per run, reused by every group).

Writes vae.pth (state dict, CPU tensors), vae.pth.json (its genes in order and settings,
b2s.model.weights), loss_history.csv, loss_plot.png and train_summary.json into --outdir. With --checkpoint_dir, the full training state is saved every --checkpoint_every
epochs to <dir>/vae_checkpoint.pt and a rerun with the same data and settings resumes from it.
"""

from __future__ import annotations

import argparse

import b2s.model.config as bconfig
import b2s.model.device as bdevice
from b2s.errors import run_cli
from b2s.model.stage import TrainOptions, run_train
from b2s.model.vae import REPARAM_CHOICES


def build_parser() -> argparse.ArgumentParser:
    """Command line of TRAIN_VAE (docs/architecture.md); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="model_input.h5ad from PREPROCESS")
    p.add_argument("--hidden_size", type=int, required=True, help="latent size")
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
    p.add_argument("--patience", type=int, required=True, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--device", required=True, help="auto | cpu | cuda (auto: cuda when available)")
    p.add_argument("--checkpoint_dir", required=True,
                   help="folder for vae_checkpoint.pt (resume); an empty string = no checkpoints")
    p.add_argument("--checkpoint_every", type=int, required=True)
    p.add_argument("--log_every", type=int, required=True)
    p.add_argument("--amp", choices=bdevice.AMP_CHOICES, required=True,
                   help="mixed precision: auto = bf16 autocast where the hardware has native bf16, on, off (fp32)")
    p.add_argument("--free_bits", type=float, default=TrainOptions.free_bits,
                   help="nats per latent dimension the KL term does not charge (native; default %(default)s)")
    p.add_argument("--kl_warmup", type=int, default=TrainOptions.kl_warmup,
                   help="epochs of linear KL (beta) warm-up (native; default %(default)s)")
    p.add_argument("--reparam", choices=REPARAM_CHOICES, default=TrainOptions.reparam,
                   help="latent sampling form: standard (z = mu + eps*std) or omicverse (z = eps + mu*std)")
    p.add_argument("--engine", choices=["native", "omicverse"], required=True)
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (unset settings: b2s.model.stage.resolve_options)."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, then write the TRAIN_VAE outputs (b2s.model.stage)."""
    run_train(TrainOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)
