"""tests/output_identity.py on tiny fake outdirs (no pipeline run): what it fingerprints, what it
leaves out, and that compare finds each kind of change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from tests import output_identity as oi


def _outdir(root: Path) -> Path:
    d = root / "out"
    (d / "estimate_fractions").mkdir(parents=True)
    (d / "train_vae").mkdir()
    (d / "generate").mkdir()
    (d / "pipeline_info").mkdir()
    (d / "report").mkdir()
    (d / "estimate_fractions" / "fractions.csv").write_text("group,B,T\ng1,0.25,0.75\n")
    (d / "estimate_fractions" / "fractions_summary.json").write_text(
        json.dumps({"method": "wls", "seconds": 1.5, "fit": [{"r": 0.9, "seconds": 0.1}],
                    "params": {"seed": 42, "checkpoint_dir": "/a/work/b2s_checkpoints"}}))
    (d / "train_vae" / "vae.pth").write_bytes(b"\x00weights\x01")
    (d / "train_vae" / "fractions_barplot.png").write_bytes(b"\x89PNG-fake")
    (d / "pipeline_info" / "execution_trace_2026.txt").write_text("task 1 0.3s\n")
    (d / "report" / "bulk2single_report.html").write_text("<html>made at 12:00</html>")
    rng = np.random.default_rng(0)
    counts = sp.random(6, 5, density=0.5, format="csr", random_state=1, dtype=np.float32)
    counts.data = np.round(counts.data * 10) + 1
    a = ad.AnnData(X=np.log1p(counts), layers={"counts": counts.copy()})
    a.obs_names = [f"c{i}" for i in range(6)]
    a.uns["b2s"] = {"seed": int(rng.integers(100))}
    a.write_h5ad(d / "generate" / "g1.generated.h5ad")
    return d


def test_manifest_keeps_results_and_lists_what_it_leaves_out(tmp_path):
    m = oi.manifest(_outdir(tmp_path))
    e = m["entries"]
    assert set(e) == {
        "estimate_fractions/fractions.csv",
        "estimate_fractions/fractions_summary.json",
        "estimate_fractions/fractions_summary.json#params",
        "train_vae/vae.pth",
        "generate/g1.generated.h5ad:X",
        "generate/g1.generated.h5ad:layers/counts",
    }
    assert e["generate/g1.generated.h5ad:layers/counts"].startswith("csr float32 6x5 ")
    assert set(m["excluded"]) == {"pipeline_info/execution_trace_2026.txt", "report/bulk2single_report.html",
                                  "train_vae/fractions_barplot.png"}
    assert all(m["excluded"].values())


def test_same_outputs_compare_identical_and_timings_do_not_count(tmp_path, capsys):
    a = _outdir(tmp_path / "a")
    b = _outdir(tmp_path / "b")
    s = b / "estimate_fractions" / "fractions_summary.json"
    obj = json.loads(s.read_text())
    obj["seconds"], obj["fit"][0]["seconds"] = 99.0, 7.0
    obj["params"]["checkpoint_dir"] = "/b/work/b2s_checkpoints"
    s.write_text(json.dumps(obj, indent=2))  # other layout, other key order: same content
    (b / "report" / "bulk2single_report.html").write_text("<html>made at 13:00</html>")
    (b / "pipeline_info" / "execution_trace_2026.txt").write_text("task 1 9.9s\n")
    assert oi.compare(oi.manifest(a), oi.manifest(b)) == []
    assert oi.main(["compare", str(a), str(b)]) == 0
    assert "identical: 6 entries" in capsys.readouterr().out


def _mutate_counts(d: Path) -> None:
    p = d / "generate" / "g1.generated.h5ad"
    a = ad.read_h5ad(p)
    c = a.layers["counts"].copy()
    c.data[0] += 1
    a.layers["counts"] = c
    a.write_h5ad(p)


def _mutate_x(d: Path) -> None:
    p = d / "generate" / "g1.generated.h5ad"
    a = ad.read_h5ad(p)
    x = a.X.copy()
    x.data[-1] = np.float32(x.data[-1] + np.float32(1e-6) * max(1.0, abs(float(x.data[-1]))))
    a.X = x
    a.write_h5ad(p)


def _mutate_table(d: Path) -> None:
    (d / "estimate_fractions" / "fractions.csv").write_text("group,B,T\ng1,0.26,0.74\n")


def _mutate_params(d: Path) -> None:
    s = d / "estimate_fractions" / "fractions_summary.json"
    obj = json.loads(s.read_text())
    obj["params"]["seed"] = 43
    s.write_text(json.dumps(obj))


def _mutate_result_json(d: Path) -> None:
    s = d / "estimate_fractions" / "fractions_summary.json"
    obj = json.loads(s.read_text())
    obj["fit"][0]["r"] = 0.91
    s.write_text(json.dumps(obj))


def _mutate_weights(d: Path) -> None:
    (d / "train_vae" / "vae.pth").write_bytes(b"\x00weights\x02")


def test_each_kind_of_change_is_one_line_and_exit_1(tmp_path, capsys):
    base = _outdir(tmp_path / "base")
    cases = {
        "generate/g1.generated.h5ad:layers/counts": _mutate_counts,
        "generate/g1.generated.h5ad:X": _mutate_x,
        "estimate_fractions/fractions.csv": _mutate_table,
        "estimate_fractions/fractions_summary.json#params": _mutate_params,
        "estimate_fractions/fractions_summary.json": _mutate_result_json,
        "train_vae/vae.pth": _mutate_weights,
    }
    for i, (key, mutate) in enumerate(cases.items()):
        d = tmp_path / f"m{i}"
        shutil.copytree(base, d)
        mutate(d)
        lines = oi.compare(oi.manifest(base), oi.manifest(d))
        assert lines and all(line.startswith(f"differs: {key}: ") for line in lines), (key, lines)
        assert len(lines) == 1, (key, lines)
        assert oi.main(["compare", str(base), str(d)]) == 1
    capsys.readouterr()


def test_missing_file_and_manifest_file_as_input(tmp_path, capsys):
    a = _outdir(tmp_path / "a")
    mf = tmp_path / "a.manifest.json"
    assert oi.main(["manifest", str(a), "-o", str(mf)]) == 0
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "train_vae" / "vae.pth").unlink()
    (b / "estimate_fractions" / "extra.tsv").write_text("x\n")
    capsys.readouterr()
    assert oi.main(["compare", str(mf), str(b)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "only in A: train_vae/vae.pth" in out
    assert "only in B: estimate_fractions/extra.tsv" in out
    assert oi.main(["compare", str(mf), str(a)]) == 0
