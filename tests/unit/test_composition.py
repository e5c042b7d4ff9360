"""Composition change between groups with 95 % intervals (b2s.qc.composition)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from b2s.errors import InputError
from b2s.qc.composition import COLUMNS, composition_contrast

TYPES = ["A", "B", "C", "D"]
DESIGN = {"g1": [0.4, 0.3, 0.2, 0.1], "g2": [0.4, 0.3, 0.2, 0.1], "g3": [0.2, 0.5, 0.2, 0.1]}


def _sample(seed: int, n: int = 3, conc: float = 50.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, sheet = {}, []
    for g, f in DESIGN.items():
        for k in range(n):
            rows[f"{g}_{k}"] = rng.dirichlet(np.asarray(f) * conc)
            sheet.append((g, f"{g}_{k}"))
    return pd.DataFrame(rows, index=TYPES).T, pd.DataFrame(sheet, columns=["group", "sample"])


def _truth(versus: str | None = None) -> dict[tuple[str, str], float]:
    d = pd.DataFrame(DESIGN, index=TYPES).T
    return {(g, t): d.loc[g, t] - (d.loc[versus, t] if versus else d.drop(index=g)[t].mean())
            for g in DESIGN for t in TYPES if g != versus}


def test_intervals_cover_the_true_change():
    """Over 200 seeded cohorts (3 samples per group) the 95 % intervals cover the truth >= 90 % of the time."""
    truth = _truth()
    hits = []
    for seed in range(200):
        sf, sheet = _sample(seed)
        cc = composition_contrast(sf, sheet, n_boot=400, seed=seed)
        hits += [r.ci_low <= truth[(r.group, r.celltype)] <= r.ci_high for r in cc.itertuples()]
    assert 0.9 <= np.mean(hits) <= 0.995


def test_table_flags_and_reference_group():
    sf, sheet = _sample(0, n=6, conc=400)
    cc = composition_contrast(sf, sheet, seed=1)
    assert list(cc.columns) == COLUMNS and len(cc) == 3 * len(TYPES)
    by = cc.set_index(["group", "celltype"])
    # g3 has 20 % fewer A and 20 % more B than the others: flagged; D never changes
    assert by.loc[("g3", "A"), "excludes_0"] and by.loc[("g3", "A"), "change"] == pytest.approx(-0.2, abs=0.05)
    assert by.loc[("g3", "B"), "excludes_0"] and not by.loc[("g3", "D"), "excludes_0"]
    assert (by["ci_low"] <= by["change"]).all() and (by["change"] <= by["ci_high"]).all()
    again = composition_contrast(sf, sheet, seed=1)
    pd.testing.assert_frame_equal(cc, again)  # seeded
    ref = composition_contrast(sf, sheet, reference_group="g1", seed=1)
    assert set(ref["group"]) == {"g2", "g3"} and set(ref["versus"]) == {"g1"}
    assert composition_contrast(sf, sheet[sheet["group"] == "g1"]).empty  # one group: nothing to compare
    single = sheet[~sheet["sample"].isin(["g2_1", "g2_2", "g2_3", "g2_4", "g2_5"])]  # g2 with one sample
    one = composition_contrast(sf, single, seed=1)
    assert one["se"].isna().all() and not one["excludes_0"].any() and one["change"].notna().all()
    with pytest.raises(InputError, match="--reference_group 'zz'"):
        composition_contrast(sf, sheet, reference_group="zz")
    with pytest.raises(InputError, match="lack sample"):
        composition_contrast(sf.drop(index="g1_0"), sheet)


def test_reference_group_may_be_given_as_the_samplesheet_shows_it():
    """--reference_group 'Day 0' names the group whose file name (ID) is Day_0."""
    sf, sheet = _sample(0)
    sheet["group"] = sheet["group"].replace({"g1": "Day_0"})
    by_name = composition_contrast(sf, sheet, reference_group="Day 0", n_boot=50, seed=1)
    by_id = composition_contrast(sf, sheet, reference_group="Day_0", n_boot=50, seed=1)
    pd.testing.assert_frame_equal(by_name, by_id)
    assert "Day_0" not in set(by_name["group"])
    with pytest.raises(InputError, match="Day 9"):
        composition_contrast(sf, sheet, reference_group="Day 9", n_boot=50, seed=1)
