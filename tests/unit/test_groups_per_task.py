"""--groups_per_task: GENERATE -> FILTER -> QC of two groups in one process per stage write the very
same per-group files as one process per group and stage (what each task ran before batching)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from b2s.errors import warning_group, warning_line
from b2s.model.vae import BetaVAE
from tests.helpers import pbmc_model_input, pipeline_args
from tests.pipeline.nfrun import NUMBA_SHARED

BIN = Path(__file__).resolve().parents[2] / "bin"
GROUPS = ["g1", "g.2"]  # a dot in a name: output names are <group>.<name>.<ext>
HIDDEN = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A model input with counts, untrained weights, cell targets and a bulk for two groups."""
    d = tmp_path_factory.mktemp("gpt_inputs")
    rng = np.random.default_rng(0)
    mi = pbmc_model_input()
    counts = sp.csr_matrix(mi.X, copy=True)
    counts.data = rng.poisson(np.expm1(counts.data) * 2).astype(np.float32)
    mi.layers["counts"] = counts
    mi.obs["total_counts"] = np.asarray(counts.sum(axis=1)).ravel() + 1.0
    mi.write_h5ad(d / "model_input.h5ad")
    torch.manual_seed(0)
    torch.save(BetaVAE(mi.n_vars, HIDDEN).state_dict(), d / "vae.pth")
    types = list(mi.obs["celltype"].cat.categories)[:4]
    rows = [(g, t, 0.25, int(n)) for g, ns in zip(GROUPS, ([60, 40, 30, 20], [20, 50, 30, 40]))
            for t, n in zip(types, ns)]
    pd.DataFrame(rows, columns=["group", "celltype", "fraction", "n_cells"]).to_csv(d / "cell_targets.csv", index=False)
    raw = counts.toarray()
    samples = {f"s{i}": raw[rng.integers(0, mi.n_obs, 100)].sum(axis=0) for i in range(4)}
    pd.DataFrame(samples, index=pd.Index(mi.var_names, name="gene")).astype(np.int64).to_csv(
        d / "bulk_counts.tsv", sep="\t")
    pd.DataFrame({"group": [GROUPS[0]] * 2 + [GROUPS[1]] * 2, "sample": list(samples)}).to_csv(
        d / "groups.csv", index=False)
    return {k: d / f for k, f in [("mi", "model_input.h5ad"), ("weights", "vae.pth"),
                                  ("targets", "cell_targets.csv"), ("bulk", "bulk_counts.tsv"),
                                  ("groups", "groups.csv")]}


def _run(script: str, args: list[str], cwd: Path) -> str:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONNOUSERSITE="1",
               NUMBA_CACHE_DIR=str(NUMBA_SHARED / "numba"), MPLCONFIGDIR=str(cwd / ".mpl"))
    proc = subprocess.run([sys.executable, str(BIN / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _stages(inputs: dict[str, Path], outdir: Path, groups: list[str]) -> str:
    """The three stages' commands as the modules write them, for ``groups`` in one task each."""
    outdir.mkdir(exist_ok=True)
    # inputs staged by name into the task folder, as Nextflow does (recorded params hold the names)
    for path in inputs.values():
        if not (outdir / path.name).exists():
            os.symlink(path, outdir / path.name)
    log = _run("generate.py", [*pipeline_args("GENERATE"), "--input", "model_input.h5ad", "--weights", "vae.pth", "--targets", "cell_targets.csv",
                               "--group", *groups, "--bulk", "bulk_counts.tsv", "--groups", "groups.csv",
                               "--hidden_size", str(HIDDEN), "--device", "cpu", "--bulk_shift", "allocate",
                               "--seed", "42", "--outdir", "."], outdir)
    log += _run("filter_cells.py", [*pipeline_args("FILTER"), "--input", *[f"{g}.generated.h5ad" for g in groups], "--group", *groups,
                                    "--leiden_size", "10", "--seed", "42", "--outdir", "."], outdir)
    log += _run("qc.py", [*pipeline_args("QC"), "--generated", *[f"{g}.generated.h5ad" for g in groups],
                          "--filtered", *[f"{g}.filtered.h5ad" for g in groups], "--reference", "model_input.h5ad",
                          "--targets", "cell_targets.csv", "--group", *groups, "--bulk", "bulk_counts.tsv",
                          "--groups", "groups.csv", "--top_markers", "50", "--mde_max_cells", "200",
                          "--seed", "42", "--outdir", "."], outdir)
    return log


def _outputs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def _same_h5ad(a: Path, b: Path) -> None:
    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    assert list(x.obs_names) == list(y.obs_names) and list(x.var_names) == list(y.var_names)
    pd.testing.assert_frame_equal(x.obs, y.obs)
    for m, n in [(x.X, y.X)] + [(x.layers[k], y.layers[k]) for k in x.layers]:
        assert (sp.csr_matrix(m) != sp.csr_matrix(n)).nnz == 0
    assert set(x.layers) == set(y.layers) and set(x.obsm) == set(y.obsm)
    for k in x.obsm:
        assert np.array_equal(np.asarray(x.obsm[k]), np.asarray(y.obsm[k]))
    assert set(x.uns) == set(y.uns)
    for k in x.uns:
        assert str(x.uns[k]) == str(y.uns[k]), k


def test_two_groups_in_one_process_equal_one_process_per_group(inputs, tmp_path):
    for g in GROUPS:
        _stages(inputs, tmp_path / "one", [g])
    log = _stages(inputs, tmp_path / "two", GROUPS)
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert sorted(one) == sorted(two)
    expected = {f"{g}.{name}" for g in GROUPS for name in (
        "generated.h5ad", "celltype_shifts.csv", "filtered.h5ad", "filter_summary.json", "cellprop.png",
        "cellprop.csv", "correlation.png", "correlation.csv", "correlation_matrix.csv", "mde.png",
        "metrics.json", "bulk_qc.csv", "bulk_residuals.csv", "bulk_scatter.png")}
    assert set(one) == expected
    for name in sorted(one):
        if name.endswith(".h5ad"):
            _same_h5ad(one[name], two[name])
        else:  # tables, JSON (with their recorded params) and plots: byte for byte
            assert one[name].read_bytes() == two[name].read_bytes(), name
    # the reference's markers are computed once for the two groups
    assert log.count("wilcoxon markers") == 1
    # a two-group process tags its groups' warnings with the group; the rest are the task's own
    # (e.g. the weights' missing sidecar), which name no group
    for line in (line for line in log.splitlines() if line.startswith("WARNING: ")):
        assert line.startswith("WARNING: [group=") or not any(f"{g}:" in line or f"'{g}'" in line for g in GROUPS), line


def test_mismatched_inputs_and_groups_stop_with_one_line(inputs, tmp_path):
    from b2s.errors import InputError
    from tests.helpers import load_script

    with pytest.raises(InputError, match=r"1 --input file\(s\) for 2 --group name\(s\)"):
        load_script("bin/filter_cells.py").main(pipeline_args("FILTER") + [
            "--input", "a.generated.h5ad", "--group", "a", "b", "--outdir", str(tmp_path)])
    with pytest.raises(InputError, match=r"2 --generated and 1 --filtered file\(s\) for 2 --group"):
        load_script("bin/qc.py").main(pipeline_args("QC") + [
            "--generated", "a", "b", "--filtered", "a", "--reference", str(inputs["mi"]),
            "--targets", str(inputs["targets"]), "--group", "a", "b", "--bulk", str(inputs["bulk"]),
            "--groups", str(inputs["groups"]), "--outdir", str(tmp_path)])


def test_warning_lines_are_tagged_only_inside_a_group_block():
    assert warning_line("x  y") == "WARNING: x y"
    with warning_group("g.2"):
        assert warning_line("[filter] z") == "WARNING: [group=g.2] [filter] z"
        with warning_group(None):
            assert warning_line("z") == "WARNING: z"
    assert warning_line("z") == "WARNING: z"
