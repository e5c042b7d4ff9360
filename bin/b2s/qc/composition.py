"""Composition change between bulk groups, with 95 % intervals from a bootstrap over samples.

For each group and cell type: the group's mean fraction minus the centre's (``reference_group``
when given, else the mean over the other groups' means), and an interval from resampling
samples within every group (seeded). With a handful of samples per group a percentile
bootstrap is too narrow (it sees the plug-in variance, ``(n-1)/n`` of the unbiased one, and few
distinct resamples), so the interval is ``change +- t(0.975, df) * se``: ``se`` the bootstrap
standard deviation with each group's share of it scaled by ``n/(n-1)``, ``df`` the smallest
group's samples - 1 (a group with one sample: no intervals, NaN). ``excludes_0`` flags intervals
that exclude 0. Coverage of the true change is
measured in benchmarks/bulk_informed.py (``--contrast``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from b2s._constants import CELLTYPE, FRACTION, GROUP, SAMPLE
from b2s.errors import InputError
from b2s.groupnames import group_id

N_BOOT = 2000
COLUMNS = [GROUP, "versus", CELLTYPE, FRACTION, "fraction_versus", "change", "se", "ci_low",
           "ci_high", "excludes_0", "n_samples"]


def _change(means: np.ndarray, k: int, ref: int | None) -> np.ndarray:
    """Group ``k``'s means minus the centre's (types)."""
    if ref is not None:
        return means[k] - means[ref]
    return means[k] - np.delete(means, k, axis=0).mean(axis=0)


def composition_contrast(sample_fractions: pd.DataFrame, groups: pd.DataFrame, reference_group: str | None = None,
                         n_boot: int = N_BOOT, seed: int = 42) -> pd.DataFrame:
    """Per group and type: change of the mean fraction vs the centre, 95 % interval (module docstring).

    Args:
        sample_fractions: samples (index) x cell types.
        groups: columns ``group, sample``.
        reference_group: compare every group with this one instead of the others' mean.

    Returns:
        A frame with :data:`COLUMNS` (empty with fewer than 2 groups).
    """
    g = groups.astype({GROUP: str, SAMPLE: str})
    names = list(pd.unique(g[GROUP]))
    reference_group = group_id(reference_group, names)
    if len(names) < 2:
        return pd.DataFrame(columns=COLUMNS)
    if reference_group is not None and str(reference_group) not in names:
        raise InputError(f"--reference_group '{reference_group}' is not a group of the samplesheet "
                         f"(groups: {', '.join(names)}); pass one of them")
    sf = sample_fractions.copy()
    sf.index = sf.index.astype(str)
    missing = sorted(set(g[SAMPLE]) - set(sf.index))
    if missing:
        raise InputError(f"sample fractions lack sample(s) {', '.join(missing)}; pass sample_fractions.csv "
                         "and groups.csv of the same run")
    types = list(sf.columns)
    per = [sf.loc[g.loc[g[GROUP] == n, SAMPLE]].to_numpy(np.float64) for n in names]
    n_s = np.array([len(x) for x in per])
    ref = names.index(str(reference_group)) if reference_group is not None else None
    means = np.vstack([x.mean(axis=0) for x in per])
    rng = np.random.default_rng(seed)
    # each group's bootstrap means, scaled around the group mean by sqrt(n/(n-1)) (unbiased variance)
    boot = np.empty((n_boot, len(names), len(types)))
    for k, x in enumerate(per):
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        bm = x[idx].mean(axis=1)
        boot[:, k] = means[k] + (bm - means[k]) * (np.sqrt(len(x) / (len(x) - 1)) if len(x) > 1 else 0.0)
    from scipy.stats import t as student_t

    q = float(student_t.ppf(0.975, max(int(n_s.min()) - 1, 1)))
    rows = []
    for k, name in enumerate(names):
        if k == ref:
            continue
        change = _change(means, k, ref)
        bc = np.stack([_change(b, k, ref) for b in boot])
        # a group with one sample has no replicate variance: no interval can be given
        se = bc.std(axis=0, ddof=1) if n_s.min() >= 2 else np.full(len(types), np.nan)
        lo, hi = change - q * se, change + q * se
        centre = means[ref] if ref is not None else np.delete(means, k, axis=0).mean(axis=0)
        for i, t in enumerate(types):
            rows.append((name, str(reference_group) if ref is not None else "other groups", t, means[k, i],
                         centre[i], change[i], se[i], lo[i], hi[i], bool(lo[i] > 0 or hi[i] < 0 ), int(n_s[k])))
    return pd.DataFrame(rows, columns=COLUMNS)
