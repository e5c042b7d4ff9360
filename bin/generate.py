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
import json
import os

import pandas as pd

from b2s.errors import InputError, run_cli
from b2s.generate.bulkshift import DEFAULT_SHIFT, SHIFT_CHOICES
from b2s.generate.rates import CALIBRATE_CHOICES, COUNTS_CHOICES, DECODE_CHOICES, DEFAULTS, DISPERSION_CHOICES
from b2s.model.vae import REPARAM_CHOICES

TARGET_COLUMNS = ["group", "celltype", "fraction", "n_cells"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of GENERATE (docs/architecture.md)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="model_input.h5ad from PREPROCESS")
    p.add_argument("--weights", required=True, help="vae.pth from TRAIN_VAE (or --vae_weights)")
    p.add_argument("--targets", required=True, help="cell_targets.csv from ESTIMATE_FRACTIONS")
    p.add_argument("--group", required=True, nargs="+", help="bulk group(s) to generate, one after the other")
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch_size", type=int, default=4096, help="cells per forward pass (memory only)")
    p.add_argument("--decode", choices=DECODE_CHOICES, default=DEFAULTS["decode"],
                   help="latent code decoded: posterior mean or a posterior sample (native engine)")
    p.add_argument("--counts", choices=COUNTS_CHOICES, default=DEFAULTS["counts"],
                   help="integer counts drawn from calibrated decoder rates into layers['counts'] (nb, poisson) "
                        "or X = decoder output (none) (native engine)")
    p.add_argument("--calibrate", choices=CALIBRATE_CHOICES, default=DEFAULTS["calibrate"],
                   help="rate calibration per cell type and gene, or per gene")
    p.add_argument("--dispersion", choices=DISPERSION_CHOICES, default=DEFAULTS["dispersion"],
                   help="NB dispersion around each reference cell's decoded rate (residual) or its type's mean (type)")
    p.add_argument("--reparam", choices=REPARAM_CHOICES, default="standard",
                   help="latent sampling form the weights were trained with (TRAIN_VAE --reparam)")
    p.add_argument("--engine", choices=["native", "omicverse"], default="native")
    p.add_argument("--bulk_shift", choices=("auto", *SHIFT_CHOICES), default="auto",
                   help="bulk-informed generation (b2s.generate.bulkshift): contrast (each group vs the cohort, per type), "
                        "allocate | weighted (vs the reference), none; auto: "
                        f"{DEFAULT_SHIFT} with >= 2 groups and the native engine, else none")
    p.add_argument("--reference_group", help="--bulk_shift contrast: the group the others are compared "
                                             "with (default: the cohort)")
    p.add_argument("--bulk", help="bulk_counts.tsv from PREPARE_INPUTS (needed by --bulk_shift)")
    p.add_argument("--groups", help="groups.csv from PREPARE_INPUTS (needed by --bulk_shift)")
    p.add_argument("--outdir", default=".")
    return p.parse_args(argv)


def read_targets(path: str, group: str) -> dict[str, int]:
    """``{celltype: n_cells}`` of ``group`` from cell_targets.csv, validated."""
    if not os.path.isfile(path):
        raise InputError(f"--targets {path} does not exist; pass the cell_targets.csv written by ESTIMATE_FRACTIONS")
    try:
        df = pd.read_csv(path, dtype={"group": str, "celltype": str})
    except Exception as err:
        raise InputError(f"--targets {path} is not a readable CSV ({type(err).__name__}); pass ESTIMATE_FRACTIONS' cell_targets.csv") from None
    missing = [c for c in TARGET_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"--targets {path} lacks column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))}); "
            "it must have group,celltype,fraction,n_cells"
        )
    rows = df[df["group"] == group]
    if rows.empty:
        groups = ", ".join(pd.unique(df["group"]).astype(str))
        raise InputError(f"--group '{group}' is not in --targets {path} (groups: {groups}); pass one of them")
    n = pd.to_numeric(rows["n_cells"], errors="coerce")
    if n.isna().any() or (n < 0).any() or (n != n.round()).any():
        raise InputError(f"--targets {path} has non-integer or negative n_cells for group '{group}'; n_cells must be whole numbers >= 0")
    if rows["celltype"].duplicated().any():
        dup = rows.loc[rows["celltype"].duplicated(), "celltype"].tolist()
        raise InputError(f"--targets {path} lists cell type(s) {dup} twice for group '{group}'; keep one row per group and cell type")
    return dict(zip(rows["celltype"], n.astype(int)))


def bulk_shifts(args: argparse.Namespace, model_input, cohort: dict | None = None) -> dict:
    """Per-type shifts of ``args.group`` (b2s.generate.bulkshift), written to ``<group>.celltype_shifts.csv``
    (``cohort``: :func:`contrast_cohort` of the task, for ``--bulk_shift contrast``)."""
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc.bulk as bulkqc
    if args.bulk_shift == "contrast":
        res = bulkshift.contrast_shifts(cohort or contrast_cohort(args, model_input), args.group)
    else:
        bulk, groups = bulkqc.read_bulk_inputs(args.bulk, args.groups)
        rows = pd.read_csv(args.targets, dtype={"group": str, "celltype": str})
        rows = rows[rows["group"] == args.group]
        types = list(pd.unique(model_input.obs["celltype"].astype(str)))
        fractions = bulkqc.fractions_of(rows, types)
        res = bulkshift.estimate_shifts(bulkqc.group_bulk(bulk, groups, args.group), model_input, types, fractions,
                                        mode=args.bulk_shift)
    path = os.path.join(args.outdir, f"{args.group}.celltype_shifts.csv")
    res["table"].to_csv(path, index=False, float_format="%.6g")
    n = {t: f"+{v['n_up']}/-{v['n_down']}" for t, v in res["summary"].items()}
    print(f"[generate] {args.group}: bulk shifts ({args.bulk_shift}) genes up/down per type: "
          f"{', '.join(f'{k} {v}' for k, v in n.items())}; wrote {path}", flush=True)
    if args.bulk_shift == "contrast":
        ident = pd.DataFrame.from_dict(res["summary"], orient="index").rename_axis("celltype")
        ident.to_csv(os.path.join(args.outdir, f"{args.group}.celltype_identifiability.csv"), float_format="%.6g")
        off = {t: v["reason"] for t, v in res["summary"].items() if not v["identifiable"]}
        print(f"[generate] {args.group}: vs {res['centre']}; not identifiable (left unshifted): "
              f"{'; '.join(f'{t}: {r}' for t, r in off.items()) or 'none'}", flush=True)
    return res


def resolve_shift(args: argparse.Namespace) -> str:
    """``--bulk_shift auto`` -> the mode (one console line, recorded in ``uns['bulk_shift']``); returns why."""
    import b2s.qc.bulk as bulkqc

    if args.bulk_shift != "auto":
        if args.bulk_shift != "none" and args.engine == "omicverse":
            raise InputError(f"--bulk_shift {args.bulk_shift} needs --engine native (omicverse ignores the bulk); "
                             "pass --bulk_shift none with --engine omicverse")
        if args.bulk_shift != "none" and (not args.bulk or not args.groups):
            raise InputError(f"--bulk_shift {args.bulk_shift} needs --bulk and --groups (PREPARE_INPUTS' "
                             "bulk_counts.tsv and groups.csv); pass them or --bulk_shift none")
        return f"--bulk_shift {args.bulk_shift} given"
    if args.engine != "native":
        args.bulk_shift, why = "none", "auto: --engine omicverse ignores the bulk"
    elif not args.bulk or not args.groups:
        args.bulk_shift, why = "none", "auto: no --bulk/--groups"
    else:
        n = len(pd.unique(bulkqc.read_bulk_inputs(args.bulk, args.groups)[1]["group"]))
        if n >= 2:
            args.bulk_shift, why = DEFAULT_SHIFT, f"auto: {n} groups, each compared with the cohort per cell type"
        else:
            args.bulk_shift = "none"
            why = ("auto: one group, so no between-group contrast; shifts against the reference (--bulk_shift "
                   "weighted) stay opt-in because they also absorb platform differences every sample shares")
    print(f"[generate] --bulk_shift {args.bulk_shift} ({why})", flush=True)
    return why


def contrast_cohort(args: argparse.Namespace, model_input) -> dict:
    """:func:`b2s.generate.bulkshift.contrast_model` of the whole cohort (every group's bulk and fractions), once per task."""
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc.bulk as bulkqc

    bulk, groups = bulkqc.read_bulk_inputs(args.bulk, args.groups)
    rows = pd.read_csv(args.targets, dtype={"group": str, "celltype": str})
    types = list(pd.unique(model_input.obs["celltype"].astype(str)))
    fractions = {str(g): bulkqc.fractions_of(r, types) for g, r in rows.groupby("group", sort=False)}
    return bulkshift.contrast_model(bulk, groups, model_input, types, fractions, reference_group=args.reference_group)


def main(argv: list[str] | None = None) -> None:
    """Generate the cells of each ``--group`` and write ``<group>.generated.h5ad``."""
    args = parse_args(argv)
    from b2s.errors import warning_group
    from b2s.model.device import resolve_device
    from b2s.model.train import read_model_input
    from b2s.model.vae import GeneSubsetVAE, load_weights
    from b2s.model.weights import check_weights, subset_positions

    os.makedirs(args.outdir, exist_ok=True)
    groups = args.group
    # every group's targets first: a bad group stops the task before any cells are written
    targets = {g: read_targets(args.targets, g) for g in groups}
    device = resolve_device(args.device)
    model_input = read_model_input(args.input, need_celltype=True)
    # genes, order and sizes from the sidecar (vae.pth.json) when there is one; then the tensors' shapes
    subset = subset_positions(args.weights, list(model_input.var_names))
    if subset is None:
        gene_index = check_weights(args.weights, list(model_input.var_names), args.hidden_size, args.reparam)
        model = load_weights(args.weights, model_input.n_vars, args.hidden_size, "cpu", gene_index=gene_index)
    else:  # the VAE models some of the genes (--vae_genes): it reads and writes those columns
        check_weights(args.weights, None, args.hidden_size, args.reparam)
        model = GeneSubsetVAE(load_weights(args.weights, len(subset), args.hidden_size, "cpu"), subset,
                              model_input.n_vars)
        print(f"the VAE models {len(subset)} of the {model_input.n_vars} model genes (its sidecar); the others "
              "take their cell type's mean rate", flush=True)
    rates = shared_rates(args, model, model_input, device) if len(groups) > 1 else None
    args.shift_decision = resolve_shift(args)
    cohort = contrast_cohort(args, model_input) if args.bulk_shift == "contrast" else None
    for g in groups:
        # the recorded params are those of a one-group run: outputs do not depend on batching
        with warning_group(g if len(groups) > 1 else None):
            generate_group(argparse.Namespace(**{**vars(args), "group": g}), targets[g], model, model_input, device,
                           rates=rates, cohort=cohort)


def shared_rates(args: argparse.Namespace, model, model_input, device):
    """The rate model of a batch of groups, once (None when it depends on the group's seed or is unused):
    with ``--decode mean`` decoding the reference is deterministic, so every group would compute the same."""
    from b2s.generate.rates import rate_model

    if args.engine != "native" or args.decode != "mean" or args.counts == "none" or "counts" not in model_input.layers:
        return None
    return rate_model(model, model_input, counts=args.counts, calibrate=args.calibrate, decode=args.decode,
                      dispersion=args.dispersion,
                      device=device, batch_size=args.batch_size, hidden_size=args.hidden_size, reparam=args.reparam)


def generate_group(args: argparse.Namespace, targets: dict[str, int], model, model_input, device,
                   rates=None, cohort: dict | None = None) -> None:
    """Generate the cells of ``args.group`` (one group) and write ``<group>.generated.h5ad``
    (``rates``: :func:`shared_rates` of the batch, or None to compute them for this group;
    ``cohort``: :func:`contrast_cohort` of the task, or None)."""
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.io.artifacts import write_h5ad

    known = set(model_input.obs["celltype"].astype(str))
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise InputError(
            f"--targets {args.targets} has cell type(s) {unknown} for group '{args.group}' that are not in "
            f"--input {args.input} obs['celltype'] (found: {', '.join(sorted(known))}); use files from the same run"
        )
    seed = group_seed(args.seed, args.group)
    kwargs = dict(hidden_size=args.hidden_size, seed=seed, device=str(device), batch_size=args.batch_size)
    decision = getattr(args, "shift_decision", None) or resolve_shift(args)
    shift = None
    if args.bulk_shift != "none":
        shift = bulk_shifts(args, model_input, cohort)
    if args.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: omicverse takes long to import

        adata = omicverse_engine.generate_cells(model.state_dict(), model_input, targets, **kwargs)
    else:
        adata = generate_cells(model, model_input, targets, decode=args.decode, counts=args.counts,
                               calibrate=args.calibrate, reparam=args.reparam, dispersion=args.dispersion,
                               shift=None if shift is None else shift["lfc"], rates=rates, **kwargs)
    # a JSON string: cell-type names may hold '/', which h5ad group keys may not
    record = {"mode": args.bulk_shift, "decision": decision}
    if shift is not None:
        record.update(fractions_refit=shift["fractions_refit"], n_shifted=shift["summary"])
        if "centre" in shift:
            record["centre"] = shift["centre"]
            record["not_identifiable"] = {t: v["reason"] for t, v in shift["summary"].items() if not v["identifiable"]}
    adata.uns["bulk_shift"] = json.dumps(record)
    adata.obs_names = [f"{args.group}_{name}" for name in adata.obs_names]
    out = os.path.join(args.outdir, f"{args.group}.generated.h5ad")
    write_h5ad(adata, out, params=dict(vars(args), generation_seed=seed))
    counts = adata.obs["celltype"].value_counts().reindex(list(targets)).fillna(0).astype(int)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes ({', '.join(f'{k}={v}' for k, v in counts.items())})", flush=True)


if __name__ == "__main__":
    run_cli(main)
