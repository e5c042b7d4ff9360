#!/usr/bin/env python3
"""First-use cost of QC's steps in a fresh process (numba compilation, lazy imports).

Runs ``b2s.qc.markers.reference_markers`` and ``b2s.qc.embed.embed`` (pymde) on the bundled data's source
(pbmc68k_reduced, 700 reference + 840 resampled "generated" cells), then ``embed`` again in the
same process, under cProfile; prints wall and CPU seconds per step and the time spent in numba's
``_compile_for_args``. Run it twice with the same empty ``NUMBA_CACHE_DIR`` to see cold vs warm:

    rm -rf /tmp/qcnc; for c in cold warm; do NUMBA_CACHE_DIR=/tmp/qcnc .venv/bin/python benchmarks/qc_first_use.py; done
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bin"))
sys.path.insert(0, str(REPO))


def main() -> None:
    t0 = time.perf_counter()
    import numpy as np

    import b2s.qc as qc
    from tests.helpers import pbmc_model_input

    ref = pbmc_model_input()
    rng = np.random.default_rng(0)
    gen = ref[rng.choice(ref.n_obs, 840)].copy()
    gen.obs_names = [f"g{i}" for i in range(gen.n_obs)]
    print(f"imports+data: {time.perf_counter() - t0:.1f} s wall, {time.process_time():.1f} s CPU")
    steps = [("reference_markers", lambda: qc.reference_markers(ref)),
             ("embed", lambda: qc.embed(ref, gen, seed=1)),
             ("embed again", lambda: qc.embed(ref, gen, seed=1))]
    for name, fn in steps:
        prof = cProfile.Profile()
        t, c = time.perf_counter(), time.process_time()
        prof.enable()
        fn()
        prof.disable()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        stats = pstats.Stats(prof).stats
        compile_s = sum(v[3] for k, v in stats.items() if k[2] == "_compile_for_args")
        print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU; numba compile (cumulative) {compile_s:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
