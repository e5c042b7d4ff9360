"""The whole seed sequence (read -> fractions -> preprocess -> train -> generate -> filter -> QC),
once through the pipeline's own ``b2s`` package and once through omicverse exactly as the seed
tutorial (t_bulk2single) calls it. Both write their outputs (tables, h5ad, figures) into
``outdir``. Each returns ``{stage: seconds}``; memory is recorded by the caller's meter.

Cohort handling differs by design and is part of what is measured: the pipeline estimates
fractions for all groups at once and trains the VAE ONCE; the seed tool handles one
``bulk_group`` per ``Bulk2Single`` object, so a user runs the tutorial once per group (fractions,
preprocessing and training repeated for each).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CELLTYPE = "celltype"


class _Clock:
    """Accumulates wall seconds per stage and opens the memory window of the same name."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        with self.meter.stage(stage):
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[stage] += time.perf_counter() - t0


def native_sequence(data: Path, outdir: Path, epochs: int, seed: int, meter: Any,
                    leiden_size: int = 25, fraction_kw: dict | None = None) -> dict[str, Any]:
    """The pipeline's stages in one process, through the b2s package functions."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    import b2s.fractions.estimate as fractions
    import b2s.io as io
    import b2s.io.reference as reference_io
    import b2s.plots as plots
    import b2s.preprocess as preprocess
    import b2s.qc as qc
    from b2s.cluster.filter import filter_cells
    from b2s.generate.cells import generate_cells
    from b2s.model.config import TrainConfig
    from b2s.model.train import train_vae

    clock = _Clock(meter)
    outdir.mkdir(parents=True, exist_ok=True)
    with clock("read"):
        bulk = io.read_counts(data / "bulk_counts.tsv.gz")
        groups = io.read_groups(bulk, data / "samplesheet.csv")
        ref = reference_io.read_reference(data / "reference.h5ad", CELLTYPE, seed=seed)
    with clock("fractions"):
        sf = fractions.estimate_sample_fractions(bulk, ref, fractions.DEFAULT_METHOD, seed=seed,
                                                 **(fraction_kw or {}))
        gf = fractions.group_fractions(sf, groups)
        targets = fractions.cell_targets(bulk, groups, ref, gf, scale_size=2)
        sf.to_csv(outdir / "sample_fractions.csv")
        gf.to_csv(outdir / "fractions.csv")
        targets.to_csv(outdir / "cell_targets.csv", index=False)
        plots.plot_fractions(gf, str(outdir / "fractions_barplot.png"))
    with clock("preprocess"):
        profiles = preprocess.bulk_group_profiles(bulk, groups)
        mi = preprocess.model_input(ref, bulk.index)
        profiles.to_csv(outdir / "bulk_profiles.csv")
        mi.write_h5ad(outdir / "model_input.h5ad")
    with clock("train"):
        cfg = TrainConfig(epoch_num=epochs, patience=epochs, seed=seed, device="cpu",
                          log_every=max(1, epochs // 4), checkpoint_every=max(1, epochs))
        res = train_vae(mi.X, cfg)
        torch.save(res.state_dict, outdir / "vae.pth")
        res.history.to_csv(outdir / "loss_history.csv", index=False)
        plots.plot_loss(res.history, str(outdir / "loss_plot.png"), res.best_epoch)
    palette = plots.celltype_palette(mi.obs[CELLTYPE].astype(str))
    markers = None
    for g in targets["group"].unique():
        t = targets[targets["group"] == g]
        with clock("generate"):
            gen = generate_cells(res.state_dict, mi, dict(zip(t["celltype"], t["n_cells"].astype(int))),
                                 seed=seed, device="cpu")
            gen.write_h5ad(outdir / f"{g}.generated.h5ad")
        with clock("filter"):
            filt = filter_cells(gen, leiden_size, seed)
            filt.write_h5ad(outdir / f"{g}.filtered.h5ad")
        with clock("qc"):
            props = qc.celltype_proportions(mi, t, gen, filt)
            props.to_csv(outdir / f"{g}.cellprop.csv")
            plots.plot_cellprop(props, str(outdir / f"{g}.cellprop.png"), palette=palette)
            if markers is None:  # QC runs per group in the pipeline; markers are the same
                markers = qc.reference_markers(mi, 200)
            assessed = filt if filt.n_obs else gen
            summary, matrix = qc.marker_correlation(mi, assessed, 200, markers=markers)
            summary.to_csv(outdir / f"{g}.correlation.csv", index=False)
            plots.plot_correlation(matrix, str(outdir / f"{g}.correlation.png"))
            ref_s = qc.subsample(mi, 3000, seed)
            gen_s = qc.subsample(assessed, 3000, seed + 1)
            coords = qc.embed(ref_s, gen_s, seed=seed)
            labels = list(ref_s.obs[CELLTYPE].astype(str)) + list(gen_s.obs[CELLTYPE].astype(str))
            plots.plot_embedding(coords, labels, str(outdir / f"{g}.mde.png"), palette=palette)
    return {"stage_seconds": dict(clock.seconds), "epochs_run": int(res.epochs_run),
            "final_loss": float(res.history["loss"].iloc[-1]), "groups": list(map(str, targets["group"].unique())),
            "n_generated": int(gen.n_obs), "n_filtered_last_group": int(filt.n_obs),
            "fraction_method": fractions.DEFAULT_METHOD}


def omicverse_sequence(data: Path, outdir: Path, epochs: int, seed: int, meter: Any,
                       leiden_size: int = 25, fraction_kw: dict | None = None) -> dict[str, Any]:
    """The seed tutorial's calls, once per bulk group (one Bulk2Single per group).

    Seeding (python/numpy/torch) is added before the tutorial's first call; the tutorial itself
    sets none. ``patience`` is set to the epoch count so both engines train ``epochs`` epochs.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    import anndata as ad
    import matplotlib.pyplot as plt
    import pandas as pd

    from b2s.engines.omicverse_support import seed_everything

    clock = _Clock(meter)
    outdir.mkdir(parents=True, exist_ok=True)
    with clock("read"):
        import omicverse as ov

        _ = ov.bulk2single.Bulk2Single  # omicverse loads submodules lazily; count that here
        bulk_all = pd.read_csv(data / "bulk_counts.tsv.gz", sep="\t", index_col=0)
        sheet = pd.read_csv(data / "samplesheet.csv")
        reference = ad.read_h5ad(data / "reference.h5ad")
    last: dict[str, Any] = {}
    for g, samples in sheet.groupby("group", sort=False)["sample"]:
        seed_everything(seed)
        single_data = reference.copy()  # the tutorial's single_data (Bulk2Single normalises it in place)
        with clock("fractions"):
            model = ov.bulk2single.Bulk2Single(bulk_data=bulk_all, single_data=single_data,
                                               celltype_key=CELLTYPE, bulk_group=list(samples),
                                               top_marker_num=200, ratio_num=1, gpu=-1)
            cwd = os.getcwd()
            os.chdir(outdir)  # TAPE writes model.pth into the working directory
            try:
                frac = model.predicted_fraction(**(fraction_kw or {}))
            finally:
                os.chdir(cwd)
            frac.to_csv(outdir / f"{g}.fractions.csv")
            ax = frac.plot(kind="bar", stacked=True, figsize=(8, 4))
            ax.figure.savefig(outdir / f"{g}.fractions.png", dpi=100, bbox_inches="tight")
            plt.close("all")
        with clock("preprocess"):
            model.bulk_preprocess_lazy()
            model.single_preprocess_lazy()
            model.prepare_input()
        with clock("train"):
            model.train(batch_size=512, learning_rate=1e-4, hidden_size=256, epoch_num=epochs,
                        patience=epochs, vae_save_dir=str(outdir / "save_model"), vae_save_name=f"{g}_vae",
                        generate_save_dir=str(outdir / "output"), generate_save_name=g)
            fig, _ax = model.plot_loss()
            fig.savefig(outdir / f"{g}.loss.png", dpi=100)
            plt.close("all")
        with clock("generate"):
            model.load(str(outdir / "save_model" / f"{g}_vae.pth"))
            generate_adata = model.generate()
        with clock("filter"):
            generate_adata = model.filtered(generate_adata, leiden_size=leiden_size)
            generate_adata.write_h5ad(outdir / f"{g}.generate_adata.h5ad")
        with clock("qc"):
            ov.bulk2single.bulk2single_plot_cellprop(generate_adata, celltype_key=CELLTYPE)
            plt.grid(False)
            plt.savefig(outdir / f"{g}.cellprop.png", dpi=100, bbox_inches="tight")
            plt.close("all")
            ov.bulk2single.bulk2single_plot_correlation(single_data, generate_adata, celltype_key=CELLTYPE)
            plt.grid(False)
            plt.savefig(outdir / f"{g}.correlation.png", dpi=100, bbox_inches="tight")
            plt.close("all")
            generate_adata.obsm["X_mde"] = ov.utils.mde(generate_adata.obsm["X_pca"])
            ov.pl.embedding(generate_adata, basis="X_mde", color=[CELLTYPE], wspace=0.4,
                            palette=ov.utils.pyomic_palette(), frameon="small", show=False)
            plt.savefig(outdir / f"{g}.mde.png", dpi=100, bbox_inches="tight")
            plt.close("all")
        last = {"final_loss": float(model.history[-1]), "epochs_run": len(model.history),
                "n_filtered_last_group": int(generate_adata.n_obs)}
    return {"stage_seconds": dict(clock.seconds), "groups": list(map(str, sheet["group"].unique())),
            "fraction_method": "scaden (predicted_fraction default)", **last}
