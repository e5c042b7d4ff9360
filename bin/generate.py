#!/usr/bin/env python3
"""GENERATE: synthetic single cells for bulk groups from the trained beta-VAE.

Reads cell_targets.csv (group,celltype,fraction,n_cells), keeps the rows of each --group and writes
<group>.generated.h5ad (X log-normalised CSR float32, obs['celltype'], var = model genes; with the
native engine and --counts nb|poisson also integer counts in layers['counts'] and
obs['total_counts']).
Several groups (``--group a b c``, --groups_per_task of the pipeline) are generated one after the
other in this one process: the model and the model input are loaded once, and each group's cells
are exactly those of a run with that group alone (seed b2s.generate.cells.group_seed(--seed, group)).
"""

from __future__ import annotations

import argparse

from b2s.errors import run_cli
from b2s.generate.bulkshift import DEFAULT_SHIFT, SHIFT_CHOICES
from b2s.generate.rates import CALIBRATE_CHOICES, COUNTS_CHOICES, DECODE_CHOICES, DEFAULTS, DISPERSION_CHOICES
from b2s.generate.stage import GenerateOptions, run_generate
from b2s.model.vae import REPARAM_CHOICES


def build_parser() -> argparse.ArgumentParser:
    """Command line of GENERATE (docs/architecture.md); what the pipeline always passes is required."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="model_input.h5ad from PREPROCESS")
    p.add_argument("--weights", required=True, help="vae.pth from TRAIN_VAE (or --vae_weights)")
    p.add_argument("--targets", required=True, help="cell_targets.csv from ESTIMATE_FRACTIONS")
    p.add_argument("--group", required=True, nargs="+", help="bulk group(s) to generate, one after the other")
    p.add_argument("--hidden_size", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--device", required=True, help="auto | cpu | cuda")
    p.add_argument("--batch_size", type=int, default=DEFAULTS["batch_size"], help="cells per forward pass (memory only)")
    p.add_argument("--decode", choices=DECODE_CHOICES, default=DEFAULTS["decode"],
                   help="latent code decoded: posterior mean or a posterior sample (native engine)")
    p.add_argument("--counts", choices=COUNTS_CHOICES, default=DEFAULTS["counts"],
                   help="integer counts drawn from calibrated decoder rates into layers['counts'] (nb, poisson) "
                        "or X = decoder output (none) (native engine)")
    p.add_argument("--calibrate", choices=CALIBRATE_CHOICES, default=DEFAULTS["calibrate"],
                   help="rate calibration per cell type and gene, or per gene")
    p.add_argument("--dispersion", choices=DISPERSION_CHOICES, default=DEFAULTS["dispersion"],
                   help="NB dispersion around each reference cell's decoded rate (residual) or its type's mean (type)")
    p.add_argument("--reparam", choices=REPARAM_CHOICES, default=GenerateOptions.reparam,
                   help="latent sampling form the weights were trained with (TRAIN_VAE --reparam)")
    p.add_argument("--engine", choices=["native", "omicverse"], required=True)
    p.add_argument("--bulk_shift", choices=("auto", *SHIFT_CHOICES), required=True,
                   help="bulk-informed generation (b2s.generate.bulkshift): contrast (each group vs the cohort, per type), "
                        "allocate | weighted (vs the reference), none; auto: "
                        f"{DEFAULT_SHIFT} with >= 2 groups and the native engine, else none")
    p.add_argument("--reference_group", help="--bulk_shift contrast: the group the others are compared "
                                             "with (default: the cohort)")
    p.add_argument("--bulk", required=True, help="bulk_counts.tsv from PREPARE_INPUTS (read by --bulk_shift)")
    p.add_argument("--groups", required=True, help="groups.csv from PREPARE_INPUTS (read by --bulk_shift)")
    p.add_argument("--outdir", required=True)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the cells of each ``--group`` and write ``<group>.generated.h5ad`` (b2s.generate.stage)."""
    run_generate(GenerateOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)
