#!/usr/bin/env python3
"""How many epochs the bundled test data need before every cell type is told apart (QC identity check).

    .venv/bin/python benchmarks/bundled_identity.py [--epochs 100,200,300] [--seed 42]

Runs the native stage functions on assets/test_data (reference and bulk as the `test` profile
uses them; targets from the truth group fractions), trains once in checkpointed chunks with the
pipeline's defaults, and after each chunk generates each group and reports the share of types
told apart, the median margin and the kNN typing accuracy against the reference (b2s.qc.metrics).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bin"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> None:
    """Train, generate and check identity at each epoch count."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default="100,200,300")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--free_bits", type=float, default=None, help="override the trainer default")
    a = p.parse_args(argv)
    import pandas as pd

    import b2s.fractions.estimate as fractions
    import b2s.io as io
    import b2s.io.reference as reference_io
    import b2s.preprocess as preprocess
    import b2s.qc as qc
    from b2s.generate.cells import generate_cells, group_seed
    from b2s.model.config import TrainConfig
    from b2s.model.train import train_vae

    d = ROOT / "assets" / "test_data"
    bulk = io.read_counts(d / "bulk_counts.tsv.gz")
    ref = reference_io.read_reference(d / "reference.h5ad", "celltype")
    sheet = pd.read_csv(d / "samplesheet.csv")
    truth = pd.read_csv(d / "truth_group_fractions.csv", index_col=0)
    mi = preprocess.model_input(ref, bulk.index)
    groups = sheet[["group", "sample"]] if "sample" in sheet else sheet
    targets = fractions.cell_targets(bulk, groups, ref, truth)
    markers = qc.reference_markers(mi)
    train_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for e in [int(x) for x in a.epochs.split(",")]:
            extra = {} if a.free_bits is None else {"free_bits": a.free_bits}
            res = train_vae(mi.X, TrainConfig(epoch_num=e, seed=a.seed, device="cpu", log_every=100,
                                              checkpoint_path=os.path.join(tmp, "ck.pt"), **extra))
            train_s += res.seconds
            for g, tg in targets.groupby("group", sort=False):
                t0 = time.perf_counter()
                cells = generate_cells(res.state_dict, mi, dict(zip(tg["celltype"], tg["n_cells"])),
                                       seed=group_seed(a.seed, g), device="cpu")
                gen_s = time.perf_counter() - t0
                ident = qc.identity_summary(qc.marker_correlation(mi, cells, markers=markers)[0])
                typ = qc.typing_summary(mi, cells, seed=a.seed)
                print(f"RESULT epochs {res.epochs_run} (best {res.best_epoch}) group {g}: told apart "
                      f"{ident['n_celltypes_identified']}/{ident['n_celltypes_assessed']}, median margin "
                      f"{ident['marker_r_margin_median']}, typing {typ['typing_accuracy']} vs reference "
                      f"{typ['typing_accuracy_reference']}; train {train_s:.0f} s, generate {gen_s:.1f} s; "
                      f"warnings: {len(ident['warnings']) + len(typ['warnings'])}", flush=True)


if __name__ == "__main__":
    main()
