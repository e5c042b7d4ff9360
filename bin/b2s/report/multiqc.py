"""MultiQC custom content (REPORT): the run's fractions, per-group QC metrics and warnings as
``*_mqc.tsv`` / ``*_mqc.yaml`` files, so that a MultiQC run over a larger workflow's results
(e.g. nf-core/rnaseq's) shows them as sections of its report.

Files (in ``<outdir>/report/multiqc/``), one MultiQC section each, ids prefixed ``nf_bulk2single``:

* ``bulk2single_fractions_mqc.tsv``: cell-type fractions per group (stacked bar graph);
* ``bulk2single_qc_metrics_mqc.tsv``: per-group QC metrics (table);
* ``bulk2single_warnings_mqc.yaml``: the run's warnings (stage, group, message; HTML list).

Groups are shown by their display names as given (prepare_summary.json), not their file names.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from b2s._constants import FRACTIONS_FILE, METRICS_SUFFIX, TASK_WARNINGS_TABLE
from b2s.report.inputs import discover_groups, group_names, index_files, read_csv, read_json, read_task_warnings

#: Section ids (also the file names' stems without ``_mqc``).
SECTIONS = {"fractions": "nf_bulk2single_fractions", "qc_metrics": "nf_bulk2single_qc_metrics",
            "warnings": "nf_bulk2single_warnings"}
#: QC metrics per group shown in the table (metrics.json keys), in order.
QC_KEYS = ("n_target", "n_generated", "n_filtered", "fraction_kept", "marker_r_mean", "marker_r_median",
           "typing_accuracy", "typing_ratio", "n_celltypes_identified")


def _header(section: str, name: str, description: str, plot_type: str, pconfig: dict[str, Any]) -> str:
    """MultiQC's ``#``-commented YAML header of a custom-content TSV (JSON is valid YAML)."""
    lines = [f"id: {json.dumps(SECTIONS[section])}", f"section_name: {json.dumps(name)}",
             f"description: {json.dumps(description)}", f"plot_type: {json.dumps(plot_type)}",
             f"pconfig: {json.dumps({'id': SECTIONS[section] + '_plot', **pconfig})}"]
    return "".join(f"# {ln}\n" for ln in lines)


def _tsv(table: pd.DataFrame) -> str:
    # MultiQC reads the first column as sample names: tabs/newlines in a display name would break it
    t = table.copy()
    t.index = [" ".join(str(i).split()) for i in t.index]
    return t.to_csv(sep="\t", index_label="Sample", lineterminator="\n", float_format="%.6g")


def write_multiqc(inputs_dir: str | Path, outdir: str | Path, params: dict[str, Any] | None = None) -> list[Path]:
    """Write the custom-content files for the stage outputs under ``inputs_dir``; returns their paths
    (fractions and metrics only when their inputs exist; the warnings file always, possibly empty).
    ``params``: the run's, for the user's paths in the task warnings."""
    files = index_files(Path(inputs_dir))
    names = group_names(files)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    frac = read_csv(files.get(FRACTIONS_FILE), index_col=0)
    if frac is not None and len(frac):
        frac = frac.rename(index=lambda g: names.get(str(g), str(g)))
        path = out / "bulk2single_fractions_mqc.tsv"
        path.write_text(_header("fractions", "nf-bulk2single: cell-type fractions",
                                "Estimated cell-type fractions per bulk group (fractions of cells; "
                                "ESTIMATE_FRACTIONS, fractions.csv).", "bargraph",
                                {"title": "nf-bulk2single: cell-type fractions", "ylab": "fraction of cells",
                                 "stacking": "normal", "cpswitch": False}) + _tsv(frac))
        written.append(path)
    rows = {}
    for g in discover_groups(files):
        m = read_json(files.get(f"{g}{METRICS_SUFFIX}"))
        if m is not None:
            rows[names.get(g, g)] = {k: m.get(k) for k in QC_KEYS if isinstance(m.get(k), (int, float))}
    if rows:
        path = out / "bulk2single_qc_metrics_mqc.tsv"
        path.write_text(_header("qc_metrics", "nf-bulk2single: QC of generated cells",
                                "Per-group QC of the synthetic cells (QC, <group>.metrics.json): cells targeted, "
                                "generated and kept by FILTER, marker correlation with the reference, kNN typing.",
                                "table", {"title": "nf-bulk2single: QC per group"})
                        + _tsv(pd.DataFrame.from_dict(rows, orient="index")))
        written.append(path)
    warnings = read_task_warnings(files.get(TASK_WARNINGS_TABLE), params)
    items = "".join(f"<li><b>{html.escape(stage)}</b>{' [' + html.escape(names.get(g, g)) + ']' if g else ''}: "
                    f"{html.escape(text)}</li>" for stage, g, text in warnings)
    body = f"<ul>{items}</ul>" if warnings else "<p>No warnings.</p>"
    path = out / "bulk2single_warnings_mqc.yaml"
    description = f"{len(warnings)} warning(s) printed by the run's tasks."
    path.write_text("\n".join([f"id: {json.dumps(SECTIONS['warnings'])}",
                               'section_name: "nf-bulk2single: warnings"',
                               f"description: {json.dumps(description)}",
                               'plot_type: "html"', f"data: {json.dumps(body)}", ""]))
    written.append(path)
    return written
