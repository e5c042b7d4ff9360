"""GENERATE's stage (``bin/generate.py`` parses the command line and calls :func:`run_generate`).

Several groups are generated one after the other: the model and the model input are loaded once,
and each group's cells are exactly those of a run with that group alone (seed
:func:`b2s.generate.cells.group_seed`). Every group's outputs record the options of a one-group run
(``params``: :class:`GenerateOptions` with that group, the resolved ``--bulk_shift``, its reason
``shift_decision`` and the ``generation_seed``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

import pandas as pd

from b2s._constants import (
    BULK_SHIFT_KEY,
    CELLTYPE,
    CELLTYPE_SHIFTS_SUFFIX,
    COUNTS_LAYER,
    GENERATED_SUFFIX,
    GROUP,
    IDENTIFIABILITY_SUFFIX,
    N_CELLS,
)
from b2s.errors import InputError
from b2s.generate.bulkshift import DEFAULT_SHIFT
from b2s.generate.rates import DEFAULTS
from b2s.model.config import TrainConfig


@dataclass(kw_only=True)
class GenerateOptions:
    """GENERATE's options, in the order of its command line (which the recorded ``params`` keep).

    ``group`` is one group name, or the list of a several-group task. ``bulk_shift`` may be ``auto``
    (decided by :func:`resolve_shift`); ``bulk``/``groups`` None means no bulk. The defaults are those
    of the options the pipeline never passes."""

    input: str
    weights: str
    targets: str
    group: str | list[str]
    hidden_size: int
    seed: int
    device: str
    batch_size: int = DEFAULTS["batch_size"]
    decode: str = DEFAULTS["decode"]
    counts: str = DEFAULTS["counts"]
    calibrate: str = DEFAULTS["calibrate"]
    dispersion: str = DEFAULTS["dispersion"]
    reparam: str = TrainConfig.reparam
    engine: str
    bulk_shift: str
    reference_group: str | None = None
    bulk: str | None = None
    groups: str | None = None
    outdir: str


def read_targets(path: str, group: str) -> dict[str, int]:
    """``{celltype: n_cells}`` of ``group`` from cell_targets.csv, validated (b2s.qc.metrics.read_targets)."""
    from b2s.qc.metrics import read_targets as read_target_rows

    rows = read_target_rows(path, group)
    return dict(zip(rows[CELLTYPE], rows[N_CELLS]))


def bulk_shifts(opts: GenerateOptions, model_input, cohort: dict | None = None) -> dict:
    """Per-type shifts of ``opts.group`` (one group; b2s.generate.bulkshift), written to
    ``<group>.celltype_shifts.csv`` (``cohort``: :func:`contrast_cohort` of the task, for ``--bulk_shift contrast``)."""
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc.bulk as bulkqc
    from b2s.qc.metrics import read_targets as read_target_rows

    if opts.bulk_shift == "contrast":
        res = bulkshift.contrast_shifts(cohort or contrast_cohort(opts, model_input), opts.group)
    else:
        bulk, groups = bulkqc.read_bulk_inputs(opts.bulk, opts.groups)
        types = list(pd.unique(model_input.obs[CELLTYPE].astype(str)))
        fractions = bulkqc.fractions_of(read_target_rows(opts.targets, opts.group), types)
        res = bulkshift.estimate_shifts(bulkqc.group_bulk(bulk, groups, opts.group), model_input, types, fractions,
                                        mode=opts.bulk_shift)
    path = os.path.join(opts.outdir, opts.group + CELLTYPE_SHIFTS_SUFFIX)
    res["table"].to_csv(path, index=False, float_format="%.6g")
    n = {t: f"+{v['n_up']}/-{v['n_down']}" for t, v in res["summary"].items()}
    print(f"[generate] {opts.group}: bulk shifts ({opts.bulk_shift}) genes up/down per type: "
          f"{', '.join(f'{k} {v}' for k, v in n.items())}; wrote {path}", flush=True)
    if opts.bulk_shift == "contrast":
        ident = pd.DataFrame.from_dict(res["summary"], orient="index").rename_axis(CELLTYPE)
        ident.to_csv(os.path.join(opts.outdir, opts.group + IDENTIFIABILITY_SUFFIX), float_format="%.6g")
        off = {t: v["reason"] for t, v in res["summary"].items() if not v["identifiable"]}
        print(f"[generate] {opts.group}: vs {res['centre']}; not identifiable (left unshifted): "
              f"{'; '.join(f'{t}: {r}' for t, r in off.items()) or 'none'}", flush=True)
    return res


def resolve_shift(opts: GenerateOptions) -> tuple[str, str]:
    """``--bulk_shift`` -> ``(mode, why)``; ``auto`` is decided here (one console line, recorded in
    ``uns['bulk_shift']``), an explicit mode checked against the engine and the bulk inputs."""
    import b2s.qc.bulk as bulkqc

    if opts.bulk_shift not in ("auto", "none") and opts.engine != "native":
        # the head node warned at start (b2s.head.params); the report shows it as used other than given
        mode, why = "none", f"--bulk_shift {opts.bulk_shift} given, but --engine omicverse ignores the bulk"
        print(f"[generate] --bulk_shift {mode} ({why})", flush=True)
        return mode, why
    if opts.bulk_shift != "auto":
        if opts.bulk_shift != "none" and (not opts.bulk or not opts.groups):
            raise InputError(f"--bulk_shift {opts.bulk_shift} needs --bulk and --groups (PREPARE_INPUTS' "
                             "bulk_counts.tsv and groups.csv); pass them or --bulk_shift none")
        return opts.bulk_shift, f"--bulk_shift {opts.bulk_shift} given"
    if opts.engine != "native":
        mode, why = "none", "auto: --engine omicverse ignores the bulk"
    elif not opts.bulk or not opts.groups:
        mode, why = "none", "auto: no --bulk/--groups"
    else:
        n = len(pd.unique(bulkqc.read_bulk_inputs(opts.bulk, opts.groups)[1][GROUP]))
        if n >= 2:
            mode, why = DEFAULT_SHIFT, f"auto: {n} groups, each compared with the cohort per cell type"
        else:
            mode = "none"
            why = ("auto: one group, so no between-group contrast; shifts against the reference (--bulk_shift "
                   "weighted) stay opt-in because they also absorb platform differences every sample shares")
    print(f"[generate] --bulk_shift {mode} ({why})", flush=True)
    return mode, why


def contrast_cohort(opts: GenerateOptions, model_input) -> dict:
    """:func:`b2s.generate.bulkshift.contrast_model` of the whole cohort (every group's bulk and fractions), once per task."""
    import b2s.generate.bulkshift as bulkshift
    import b2s.qc.bulk as bulkqc
    from b2s.qc.metrics import read_all_targets

    bulk, groups = bulkqc.read_bulk_inputs(opts.bulk, opts.groups)
    types = list(pd.unique(model_input.obs[CELLTYPE].astype(str)))
    fractions = {g: bulkqc.fractions_of(rows, types) for g, rows in read_all_targets(opts.targets).items()}
    return bulkshift.contrast_model(bulk, groups, model_input, types, fractions, reference_group=opts.reference_group)


def run_generate(opts: GenerateOptions) -> None:
    """Generate the cells of each group of ``opts.group`` and write ``<group>.generated.h5ad``."""
    from b2s.errors import warning_group
    from b2s.model.device import resolve_device
    from b2s.model.train import read_model_input
    from b2s.model.vae import GeneSubsetVAE, load_weights
    from b2s.model.weights import check_weights, subset_positions

    os.makedirs(opts.outdir, exist_ok=True)
    groups = [opts.group] if isinstance(opts.group, str) else list(opts.group)
    # every group's targets first: a bad group stops the task before any cells are written
    targets = {g: read_targets(opts.targets, g) for g in groups}
    device = resolve_device(opts.device)
    model_input = read_model_input(opts.input, need_celltype=True)
    # genes, order and sizes from the sidecar (vae.pth.json) when there is one; then the tensors' shapes
    subset = subset_positions(opts.weights, list(model_input.var_names))
    if subset is None:
        gene_index = check_weights(opts.weights, list(model_input.var_names), opts.hidden_size, opts.reparam)
        model = load_weights(opts.weights, model_input.n_vars, opts.hidden_size, "cpu", gene_index=gene_index)
    else:  # the VAE models some of the genes (--vae_genes): it reads and writes those columns
        check_weights(opts.weights, None, opts.hidden_size, opts.reparam)
        model = GeneSubsetVAE(load_weights(opts.weights, len(subset), opts.hidden_size, "cpu"), subset,
                              model_input.n_vars)
        print(f"the VAE models {len(subset)} of the {model_input.n_vars} model genes (its sidecar); the others "
              "take their cell type's mean rate", flush=True)
    rates = shared_rates(opts, model, model_input, device) if len(groups) > 1 else None
    mode, decision = resolve_shift(opts)
    opts = replace(opts, bulk_shift=mode)
    cohort = contrast_cohort(opts, model_input) if mode == "contrast" else None
    for g in groups:
        # the recorded params are those of a one-group run: outputs do not depend on batching
        with warning_group(g if len(groups) > 1 else None):
            generate_group(replace(opts, group=g), decision, targets[g], model, model_input, device,
                           rates=rates, cohort=cohort)


def shared_rates(opts: GenerateOptions, model, model_input, device):
    """The rate model of a batch of groups, once (None when it depends on the group's seed or is unused):
    with ``--decode mean`` decoding the reference is deterministic, so every group would compute the same."""
    from b2s.generate.rates import rate_model

    if opts.engine != "native" or opts.decode != "mean" or opts.counts == "none" or COUNTS_LAYER not in model_input.layers:
        return None
    return rate_model(model, model_input, counts=opts.counts, calibrate=opts.calibrate, decode=opts.decode,
                      dispersion=opts.dispersion,
                      device=device, batch_size=opts.batch_size, hidden_size=opts.hidden_size, reparam=opts.reparam)


def generate_group(opts: GenerateOptions, decision: str, targets: dict[str, int], model, model_input, device,
                   rates=None, cohort: dict | None = None) -> None:
    """Generate the cells of ``opts.group`` (one group, ``opts.bulk_shift`` resolved, ``decision`` its
    reason) and write ``<group>.generated.h5ad`` (``rates``: :func:`shared_rates` of the batch, or None
    to compute them for this group; ``cohort``: :func:`contrast_cohort` of the task, or None)."""
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.io.artifacts import write_h5ad

    known = set(model_input.obs[CELLTYPE].astype(str))
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise InputError(
            f"--targets {opts.targets} has cell type(s) {unknown} for group '{opts.group}' that are not in "
            f"--input {opts.input} obs['celltype'] (found: {', '.join(sorted(known))}); use files from the same run"
        )
    seed = group_seed(opts.seed, opts.group)
    kwargs = dict(hidden_size=opts.hidden_size, seed=seed, device=str(device), batch_size=opts.batch_size)
    shift = None
    if opts.bulk_shift != "none":
        shift = bulk_shifts(opts, model_input, cohort)
    if opts.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: omicverse takes long to import

        adata = omicverse_engine.generate_cells(model.state_dict(), model_input, targets, **kwargs)
    else:
        adata = generate_cells(model, model_input, targets, decode=opts.decode, counts=opts.counts,
                               calibrate=opts.calibrate, reparam=opts.reparam, dispersion=opts.dispersion,
                               shift=None if shift is None else shift["lfc"], rates=rates, **kwargs)
    # a JSON string: cell-type names may hold '/', which h5ad group keys may not
    record = {"mode": opts.bulk_shift, "decision": decision}
    if shift is not None:
        record.update(fractions_refit=shift["fractions_refit"], n_shifted=shift["summary"])
        if "centre" in shift:
            record["centre"] = shift["centre"]
            record["not_identifiable"] = {t: v["reason"] for t, v in shift["summary"].items() if not v["identifiable"]}
    adata.uns[BULK_SHIFT_KEY] = json.dumps(record)
    adata.obs_names = [f"{opts.group}_{name}" for name in adata.obs_names]
    out = os.path.join(opts.outdir, opts.group + GENERATED_SUFFIX)
    write_h5ad(adata, out, params={**asdict(opts), "shift_decision": decision, "generation_seed": seed})
    counts = adata.obs[CELLTYPE].value_counts().reindex(list(targets)).fillna(0).astype(int)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes ({', '.join(f'{k}={v}' for k, v in counts.items())})", flush=True)
