"""FILTER's stage (``bin/filter_cells.py`` parses the command line and calls :func:`run_filter`).

Several groups are filtered one after the other, each exactly as in a run with that group alone
(their ``params``: :class:`FilterOptions` with that group's file and name).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

from b2s._constants import FILTER_SUMMARY_SUFFIX, FILTERED_SUFFIX, UNS_KEY


@dataclass(kw_only=True)
class FilterOptions:
    """FILTER's options, in the order of its command line (which the recorded ``params`` keep);
    ``input`` and ``group``: lists of one file/name per group for :func:`run_filter`, one each for
    :func:`filter_group`."""

    input: str | list[str]
    leiden_size: int
    seed: int
    group: str | list[str]
    engine: str
    outdir: str


def run_filter(opts: FilterOptions) -> None:
    """Filter each group's generated cells and write its filtered h5ad and summary JSON."""
    from b2s.errors import InputError, warning_group

    if opts.leiden_size < 1:
        raise InputError(f"--leiden_size {opts.leiden_size}: must be >= 1; use a positive "
                         "cluster size")
    if len(opts.input) != len(opts.group):
        raise InputError(f"{len(opts.input)} --input file(s) for {len(opts.group)} --group name(s); "
                         "pass one <group>.generated.h5ad per group, in the same order")
    for path, g in zip(opts.input, opts.group):
        # the recorded params are those of a one-group run: outputs do not depend on batching
        with warning_group(g if len(opts.group) > 1 else None):
            filter_group(replace(opts, input=path, group=g))


def filter_group(opts: FilterOptions) -> None:
    """Filter one group's generated cells (``opts.input``, ``opts.group``) and write its outputs."""
    import b2s.io as io
    from b2s.cluster.filter import filter_summary, parse_uns_record
    from b2s.qc.metrics import read_cells

    out_h5ad = os.path.join(opts.outdir, opts.group + FILTERED_SUFFIX)
    out_json = os.path.join(opts.outdir, opts.group + FILTER_SUMMARY_SUFFIX)
    io.guard_inputs([out_h5ad, out_json], [opts.input])
    generated = read_cells(opts.input, "--input", "GENERATE", need_celltype=False)
    print(f"[filter] {opts.group}: read {generated.n_obs} cells x {generated.n_vars} genes "
          f"(engine {opts.engine})", flush=True)
    if opts.engine == "omicverse":
        import b2s.engines.omicverse as omicverse_engine  # lazy: omicverse takes long to import

        filtered = omicverse_engine.filter_cells(generated, opts.leiden_size, opts.seed)
    else:
        from b2s.cluster.filter import filter_cells

        filtered = filter_cells(generated, opts.leiden_size, opts.seed)
    params = io.params_from_args(asdict(opts))
    summary = filter_summary(generated, filtered)
    record = {"stage": "filter", "group": opts.group, "params": params, "summary": summary}
    if UNS_KEY in generated.uns:
        record["input"] = parse_uns_record(generated.uns[UNS_KEY])
    filtered.uns[UNS_KEY] = json.dumps(record, default=str)
    io.write_h5ad(filtered, out_h5ad)
    io.write_json(out_json, {"group": opts.group, **summary}, params=params)
    print(f"[filter] {opts.group}: wrote {out_h5ad} ({filtered.n_obs}/{generated.n_obs} cells "
          f"kept) and {out_json}", flush=True)
