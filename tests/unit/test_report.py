"""REPORT: the self-contained HTML page (b2s.report.build, bin/make_report.py)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import b2s.plots as plots
from b2s.errors import InputError
from b2s.report.build import build_report
from b2s.report.inputs import discover_groups
from tests.helpers import load_script

BIN = Path(__file__).resolve().parents[2] / "bin"
TYPES = ["B", "NK", "T"]
GROUPS = ["ctrl", "treated.v2", "T&<x>"]  # a dot and HTML-special characters in group names


def _write_run(d: Path, with_training: bool = True) -> None:
    """A miniature set of stage outputs as the pipeline stages them into one folder."""
    rng = np.random.default_rng(0)
    frac = pd.DataFrame(rng.dirichlet(np.ones(3), len(GROUPS)), columns=TYPES,
                        index=pd.Index(GROUPS, name="group"))
    frac.to_csv(d / "fractions.csv")
    plots.plot_fractions(frac, str(d / "fractions_barplot.png"))
    rows = [{"group": g, "celltype": t, "fraction": frac.loc[g, t], "n_cells": 10 + i}
            for g in GROUPS for i, t in enumerate(TYPES)]
    pd.DataFrame(rows).to_csv(d / "cell_targets.csv", index=False)
    (d / "fractions_summary.json").write_text(json.dumps({"params": {"method": "nnls"}}))
    if with_training:
        hist = pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 2.5], "recon": [2.5, 1.8, 2.2],
                             "kl": [0.5, 0.2, 0.3]})
        plots.plot_loss(hist, str(d / "loss_plot.png"))
        (d / "train_summary.json").write_text(json.dumps(
            {"device": "cpu", "epochs_run": 3, "best_epoch": 2, "best_loss": 2.0, "seconds": 1.5,
             "params": {"seed": 1}}))
    for g in GROUPS[:2]:  # full QC outputs for two groups
        props = pd.DataFrame({"n_reference": [5, 5, 10], "n_target": [10, 11, 12],
                              "n_generated": [10, 11, 12], "n_filtered": [10, 0, 12]},
                             index=pd.Index(TYPES, name="celltype"))
        for s in ("reference", "target", "generated", "filtered"):
            props[s] = props[f"n_{s}"] / props[f"n_{s}"].sum()
        props.to_csv(d / f"{g}.cellprop.csv")
        plots.plot_cellprop(props, str(d / f"{g}.cellprop.png"))
        corr = pd.DataFrame([[0.98, 0.4], [0.3, 0.5], [0.5, 0.97]], index=TYPES,
                            columns=["B", "T"])
        plots.plot_correlation(corr, str(d / f"{g}.correlation.png"))
        pd.DataFrame({"celltype": TYPES, "pearson_r": [0.98, np.nan, 0.97],
                      "n_markers": [40, 40, 40],
                      "note": ["", "absent from generated cells", ""]}).to_csv(
            d / f"{g}.correlation.csv", index=False)
        plots.plot_embedding(rng.normal(size=(60, 2)), rng.choice(TYPES, 60),
                             str(d / f"{g}.mde.png"), "MDE")
        (d / f"{g}.metrics.json").write_text(json.dumps(
            {"group": g, "n_target": 33, "n_generated": 33, "n_filtered": 22,
             "fraction_kept": 0.667, "marker_r_mean": 0.975, "marker_r_min": 0.97,
             "proportion_l1": {"target_vs_filtered": 0.33}, "params": {"seed": 1}}))
    # the third group only got through FILTER: its section must still appear
    (d / f"{GROUPS[2]}.filter_summary.json").write_text(json.dumps(
        {"n_cells_in": 33, "n_cells_out": 33, "notes": ["only 33 cells: clustering skipped"],
         "params": {"leiden_size": 50}}))


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_sections_and_embedded_images(tmp_path):
    _write_run(tmp_path)
    versions = tmp_path / "versions.yml"
    versions.write_text('"B2S:QC":\n    python: 3.11.9\n    scanpy: 1.11.5\n'
                        '"B2S:FILTER":\n    python: 3.11.9\n')
    out = tmp_path / "report" / "bulk2single_report.html"
    build_report(str(tmp_path), str(out), {"seed": 7, "method": "nnls"}, str(versions))
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for g in GROUPS:
        assert f">Group {__import__('html').escape(g)}</h2>" in text, g
    assert "T&amp;&lt;x&gt;" in text and "T&<x>" not in text  # escaped, never raw
    imgs = _images(text)
    # fractions + loss + 4 per complete group (cellprop, correlation, MDE)
    assert len(imgs) == 2 + 3 * 2
    assert all(i[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    # no external resources of any kind
    assert not re.search(r"https?://|src=\"(?!data:)|<link|<script|@import", text)
    assert "scanpy" in text and "1.11.5" in text and "nnls" in text
    assert "best_epoch" in text and "absent from generated cells" in text
    assert "only 33 cells: clustering skipped" in text
    assert "fractions.csv" in text  # file index


def test_report_tolerates_missing_training_and_versions(tmp_path):
    _write_run(tmp_path, with_training=False)
    out = tmp_path / "r.html"
    build_report(str(tmp_path), str(out), {"vae_weights": "pre.pth"}, None)
    text = out.read_text()
    assert "--vae_weights" in text and "versions.yml not available" in text
    assert len(_images(text)) == 1 + 3 * 2


def test_report_on_empty_folder(tmp_path):
    out = tmp_path / "r.html"
    (tmp_path / "in").mkdir()
    build_report(str(tmp_path / "in"), str(out), {}, None)
    text = out.read_text()
    assert "No per-group outputs were found" in text and "fractions.csv not found" in text


def test_discover_groups_follows_fraction_order(tmp_path):
    _write_run(tmp_path)
    files = {p.name: p for p in tmp_path.iterdir()}
    assert discover_groups(files) == GROUPS



def test_make_report_script(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_run(inputs)
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"outdir": "results", "leiden_size": 25}))
    versions = tmp_path / "versions.yml"
    versions.write_text("QC:\n  scanpy: 1.10.0\n")
    script = load_script("bin/make_report.py")
    argv = ["--inputs", str(inputs), "--params", str(params), "--versions", str(versions),
            "--params_out", str(tmp_path / "o" / "pipeline_info" / "params.json"), "--outdir", str(tmp_path / "o")]
    script.main(argv)
    text = (tmp_path / "o" / "bulk2single_report.html").read_text()
    assert "leiden_size" in text and ">Group ctrl</h2>" in text and "scanpy" in text
    params.write_text("{not json")
    with pytest.raises(InputError, match="--params .* is not valid JSON"):
        script.main(argv)
    with pytest.raises(InputError, match="--inputs .* is not a folder"):
        script.main(["--inputs", str(tmp_path / "missing")] + argv[2:])
    with pytest.raises(InputError, match="--versions .* does not exist; pass the collected versions.yml"):
        script.main(argv[:4] + ["--versions", str(tmp_path / "none.yml")] + argv[6:])


def test_report_with_stub_files(tmp_path):
    """`-stub` runs stage empty files: the page notes them instead of embedding broken images."""
    (tmp_path / "G.cellprop.png").write_bytes(b"")
    (tmp_path / "G.cellprop.csv").write_text("")
    (tmp_path / "G.metrics.json").write_text("{}")
    (tmp_path / "sample_fractions.csv").write_text("sample,B,T\ns1,0.25,0.75\n")
    out = tmp_path / "r.html"
    build_report(str(tmp_path), str(out), {}, None)
    text = out.read_text()
    assert ">Group G</h2>" in text and "G.cellprop.png is empty or not a PNG" in text
    assert "data:image" not in text and "sample_fractions.csv" in text and "0.75" in text


def test_report_summary_layout_and_number_formatting(tmp_path):
    """Summary first (groups, cells, marker r, device, epochs), results before run metadata,
    readable numbers and per-group anchors in the navigation bar."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_run(inputs)
    out = tmp_path / "r.html"
    build_report(str(inputs), str(out), {"seed": 7, "bulk": "/data/bulk.tsv"}, None)
    text = out.read_text()
    # section order: summary -> fractions -> training -> groups -> parameters -> files
    pos = [text.index(f"id='{a}'") for a in
           ("summary", "fractions", "training", "g-ctrl", "g-treated_v2", "run", "files")]
    assert pos == sorted(pos)
    summary = text[text.index("id='summary'"):text.index("id='fractions'")]
    # 2 groups with metrics x 33 generated, 22 kept; the filter-only group adds 33 in / 33 out
    assert ">99</div><div class='k'>cells generated<" in summary
    assert ">77 (77.8%)</div><div class='k'>cells kept after filtering<" in summary
    assert ">0.975</div>" in summary and ">cpu</div>" in summary and ">3 (best 2)</div>" in summary
    assert ">nnls</div>" in summary and ">3</div><div class='k'>groups<" in summary
    # overview links every group to its section; percent and 3-decimal formatting
    for g in GROUPS:
        assert f"href=\"#{'g-' + re.sub(r'[^A-Za-z0-9_-]', '_', g)}\"" in summary, g
    assert ">66.7%</td>" in summary and ">0.330</td>" in summary
    nav = text[text.index("<nav>"):text.index("</nav>")]
    assert "href='#g-ctrl'" in nav and "href='#g-T__x_'" in nav and "T&amp;&lt;x&gt;" in nav
    # fractions: fixed 3 decimals, cell types as row labels, no 15-digit floats anywhere
    no_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"\d\.\d{5,}", no_images)
    assert "<th>cell type</th>" in text
    # cell-type proportion table: counts with proportions and a total row
    ctrl = text[text.index("id='g-ctrl'"):text.index("id='g-treated_v2'")]
    assert ">10 (0.303)</td>" in ctrl and "<tr class='total'><th>total</th>" in ctrl
    # raw metric keys stay findable as tooltips behind human labels
    assert "title='n_filtered'>cells kept</th>" in ctrl
    # long cell-type names wrap in a header cell instead of widening the table to overflow
    assert "<div class='tbl'>" in ctrl and "max-width:16em" in text
    # parameter paths rendered monospace; no timestamps (deterministic page)
    assert "class='path'>/data/bulk.tsv</td>" in text
    build_report(str(inputs), str(tmp_path / "r2.html"), {"seed": 7, "bulk": "/data/bulk.tsv"},
                 None)
    assert (tmp_path / "r2.html").read_text() == text


def test_report_shows_cell_type_identity_and_its_warning(tmp_path):
    """Types told apart per group, the lowest in the summary tile, and QC warnings up front."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_run(inputs)
    warning = "generated cells of most types are not distinguishable by marker expression (raise --epoch_num)"
    for g, (k, n, warns) in zip(GROUPS[:2], [(3, 3, []), (1, 3, [warning])]):
        path = inputs / f"{g}.metrics.json"
        m = json.loads(path.read_text())
        m.update({"n_celltypes_identified": k, "n_celltypes_assessed": n,
                  "marker_r_margin_median": 0.0123, "warnings": warns})
        path.write_text(json.dumps(m))
    out = tmp_path / "r.html"
    build_report(str(inputs), str(out), {"seed": 7}, None)
    text = out.read_text()
    summary = text[text.index("id='summary'"):text.index("id='fractions'")]
    assert "<span class='warn'>1/3</span></div><div class='k'>cell types told apart (lowest group)" in summary
    assert f"<b>WARNING {GROUPS[1]}</b>: {warning}</p>" in summary
    assert summary.index("WARNING") < summary.index("cell types told apart")  # above the cards
    assert ">3/3</td>" in summary and ">1/3</td>" in summary
    second = text[text.index("id='g-treated_v2'"):]
    assert "title='n_celltypes_identified'>cell types told apart</th>" in second
    assert warning in second


def test_report_between_groups_section(tmp_path):
    """Composition change (flagged intervals) and per-type identifiability per group (issue 25)."""
    import json as _json

    import pandas as _pd

    from b2s.report.build import build_report

    d = tmp_path / "in"
    d.mkdir()
    for g in ("ctrl", "stim"):
        (d / f"{g}.metrics.json").write_text(_json.dumps({"group": g, "bulk_qc": {"bulk_shift": "contrast"}}))
        _pd.DataFrame({"celltype": ["B", "T"], "share": [0.03, 0.6], "identifiable": [False, True],
                       "reason": ["3.0% of the group's cells (< 5%)", ""], "median_detectable_log2fc": [3.1, 0.8],
                       "n_up": [0, 12], "n_down": [0, 4]}).to_csv(d / f"{g}.celltype_identifiability.csv", index=False)
    _pd.DataFrame({"group": ["ctrl", "ctrl"], "versus": "other groups", "celltype": ["B", "T"],
                   "fraction": [0.03, 0.6], "fraction_versus": [0.1, 0.5], "change": [-0.07, 0.1], "se": [0.01, 0.2],
                   "ci_low": [-0.09, -0.3], "ci_high": [-0.05, 0.5], "excludes_0": [True, False], "n_samples": 3}
                  ).to_csv(d / "composition_contrast.csv", index=False)
    out = tmp_path / "report.html"
    build_report(str(d), str(out), {})
    html = out.read_text()
    sec = html[html.index("id='between'"):html.index("id='training'") if "id='training'" in html else None]
    assert "1 of 2 intervals exclude 0" in sec and "-0.07" in sec
    assert "no: 3.0% of the group" in sec and "celltype_shifts.csv" in sec
    one = tmp_path / "one"
    one.mkdir()
    (one / "ctrl.metrics.json").write_text(_json.dumps({"group": "ctrl"}))
    build_report(str(one), str(tmp_path / "one.html"), {})
    assert "stay opt-in" in (tmp_path / "one.html").read_text()


def test_report_rendered_from_templates(tmp_path):
    """The page comes from bin/b2s/report/templates: skeleton, inlined report.css, navigation and the
    sections in order; user text escaped as html.escape does, HTML never escaped twice."""
    from b2s.report.markup import TEMPLATES, df_table

    _write_run(tmp_path)
    out = tmp_path / "r.html"
    build_report(str(tmp_path), str(out), {"seed": 7, "label": "a'b\"c<d>"}, None)
    text = out.read_text(encoding="utf-8")
    css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    assert f"<style>\n{css}</style>" in text and text.endswith("</main></body></html>\n")
    assert text.count("<style>") == 1
    nav = re.search(r"<nav>(.*?)</nav>", text).group(1)
    anchors = re.findall(r"href='#([^']+)'", nav)
    assert anchors == ["summary", "fractions", "between", "training", "g-ctrl", "g-treated_v2", "g-T__x_",
                       "run", "files"]
    assert nav.count("<span class='sep'>|</span>") == 2 and ">T&amp;&lt;x&gt;</a>" in nav
    assert "Parameters &amp; versions" in nav
    ids = re.findall(r"<h2 id='([^']+)'", text)
    assert ids == ["summary", "fractions", "between", "training", "g-ctrl", "g-treated_v2", "g-T__x_", "run",
                   "stages", "files"]
    # html.escape semantics (quote=True), not markupsafe's &#39; / &#34;
    assert "a&#x27;b&quot;c&lt;d&gt;" in text and "&#39;" not in text and "&#34;" not in text
    # markup built in Python and in the macros is never escaped a second time
    assert not re.search(r"&lt;/?(h[23]|p|div|table|tr|td|th|img|span|details)\b", text.replace(
        "a&#x27;b&quot;c&lt;d&gt;", ""))
    for key in ("Target cell numbers (cell_targets.csv)</h3><p class='muted'>", "<caption>Metrics (QC)</caption>",
                "<div class='cards'><div class='card'><div class='v'>3</div><div class='k'>groups</div></div>"):
        assert key in text, key
    # the table macro: row labels as header cells, numbers right-aligned, NA muted, total row bold
    df = pd.DataFrame({"n": [1, 2], "x": [0.5, np.nan], "t": ["<b'\">", "ok"]}, index=pd.Index(["a", "total"]))
    assert df_table(df, index_label="cell type", total_row="total") == (
        "<div class='tbl'><table><thead><tr><th>cell type</th><th class='num'>n</th><th class='num'>x</th>"
        "<th>t</th></tr></thead><tbody><tr><th>a</th><td class='num'>1</td><td class='num'>0.500</td>"
        "<td>&lt;b&#x27;&quot;&gt;</td></tr><tr class='total'><th>total</th><td class='num'>2</td><td class='num'>"
        "<span class='muted'>NA</span></td><td>ok</td></tr></tbody></table></div>")
