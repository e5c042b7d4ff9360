"""REPORT stage: one self-contained HTML page summarising a run.

Images are embedded as base64 PNG data URIs and tables as HTML, with the style sheet inlined,
so the file can be mailed or opened offline: it references no external resource. Files are
found by the names of docs/architecture.md; every optional file may be missing (e.g. no loss
plot when pretrained weights were given) and the page says so instead of failing.

The page is rendered from Jinja2 templates (b2s/report/templates: the skeleton, the table/image/card
macros and report.css); the sections are built by b2s.report.sections (run level) and
b2s.report.groups (per group) from the inputs read by b2s.report.inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b2s._constants import REPORT_FILE
from b2s.errors import InputError
from b2s.files import atomic_write_text
from b2s.report.groups import section_group
from b2s.report.inputs import (
    discover_groups,
    group_names,
    index_files,
)
from b2s.report.markup import anchor, as_html, render_page
from b2s.report.multiqc import write_multiqc
from b2s.report.run_params import read_given, resolve_params, write_params
from b2s.report.sections import (
    section_between_groups,
    section_bulk_input,
    section_files,
    section_fit,
    section_fractions,
    section_run,
    section_stage_summaries,
    section_summary,
    section_training,
)


@dataclass(kw_only=True)
class ReportOptions:
    """REPORT's options, in the order of its command line."""

    inputs: str
    params: str
    versions: str
    params_out: str
    outdir: str


def run_report(opts: ReportOptions) -> None:
    """REPORT (bin/make_report.py): the parameters the run used (b2s.report.run_params) written to
    ``opts.params_out`` (published as ``pipeline_info/params.json``) and ``params_decided.json``
    beside it, ``<outdir>/bulk2single_report.html`` and the MultiQC custom content in
    ``<outdir>/multiqc``."""
    if not os.path.isdir(opts.inputs):
        raise InputError(f"--inputs {opts.inputs} is not a folder; pass the folder holding the stage outputs")
    if not os.path.isfile(opts.versions):
        raise InputError(f"--versions {opts.versions} does not exist; pass the collected versions.yml")
    given, workflow = read_given(opts.params)
    params = resolve_params(given, index_files(Path(opts.inputs)), workflow) if given else {}
    decided = write_params(opts.params_out, params)
    print(f"[report] wrote {opts.params_out} and {decided} ({len(params.get('decided', {}))} value(s) decided by "
          "the run)", flush=True)
    out = os.path.join(opts.outdir, REPORT_FILE)
    build_report(opts.inputs, out, params, opts.versions)
    print(f"[report] wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)", flush=True)
    mqc = write_multiqc(opts.inputs, os.path.join(opts.outdir, "multiqc"), params)
    print(f"[report] MultiQC custom content: {', '.join(os.path.basename(p) for p in mqc)}", flush=True)


def build_report(inputs_dir: str, out_path: str, params: dict[str, Any],
                 versions_yaml: str | None = None) -> None:
    """Write the self-contained HTML report of a run.

    Parameters
    ----------
    inputs_dir
        Folder holding the stage outputs (searched recursively, by file name).
    out_path
        HTML file to write (atomically).
    params
        Run parameters shown in the page; those the run decided are marked when they hold a
        ``decided`` object (b2s.report.run_params.resolve_params).
    versions_yaml
        Path of the collected versions.yml, or None.
    """
    import b2s

    root = Path(inputs_dir)
    files = index_files(root) if root.is_dir() else {}
    groups = discover_groups(files)
    nav: list[tuple[str, str] | None] = [("summary", "Summary"), ("fractions", "Fractions"),
                                         ("between", "Between groups"), ("training", "Training")]
    if groups:
        names = group_names(files)
        nav += [None, *[(anchor(g), names.get(g, g)) for g in groups], None]
    nav += [("run", "Parameters & versions"), ("files", "Files")]
    # results first (summary, fractions, training, groups); run metadata after them
    body = [
        section_summary(groups, files, params),
        section_fractions(files),
        section_bulk_input(files),
        section_fit(files),
        section_between_groups(groups, files),
        section_training(files, params),
        *[section_group(g, files) for g in groups],
        section_run(params, versions_yaml),
        section_stage_summaries(files),
        section_files(root, files),
    ]
    page = render_page(n_groups=len(groups), version=b2s.__version__, nav=nav,
                       sections=[as_html(s) for s in body if s])
    atomic_write_text(Path(out_path), page)
