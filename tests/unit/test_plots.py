"""Figures: every plot writes a readable PNG; one colour per cell type across plots (b2s.plots)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import b2s.plots as plots

TYPES = ["T cell", "B cell", "NK", "Monocyte/Macrophage (CD14+)", "DC"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_w=300, min_h=150) -> np.ndarray:
    """Valid PNG of a sensible size that is not a blank canvas; returns the pixels."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert w >= min_w and h >= min_h and w < 4000 and h < 4000
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20  # more than a few flat colours
    return px


def _has_colour(px: np.ndarray, hex_colour: str, min_pixels: int = 30) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(px.astype(int) - rgb).sum(axis=2) <= 6).sum()) >= min_pixels


def test_palette_order_independent_and_distinct():
    a = plots.celltype_palette(TYPES)
    b = plots.celltype_palette(list(reversed(TYPES)) + TYPES)  # order and duplicates ignored
    assert a == b and set(a) == set(TYPES)
    assert len(set(a.values())) == len(TYPES)
    many = plots.celltype_palette([f"type{i}" for i in range(35)])
    assert len(set(many.values())) == 35
    assert all(v.startswith("#") and len(v) == 7 for v in many.values())


def test_plot_fractions(tmp_path):
    rng = np.random.default_rng(0)
    frac = pd.DataFrame(rng.dirichlet(np.ones(5), 3), columns=TYPES,
                        index=pd.Index(["ctrl", "treated", "a_rather_long_group_name"], name="group"))
    p = tmp_path / "fractions.png"
    plots.plot_fractions(frac, str(p), title="Fractions")
    px = _check_png(p)
    h, w, _ = px.shape
    assert w > h  # legend outside on the right makes it wide
    pal = plots.celltype_palette(TYPES)
    assert all(_has_colour(px, pal[t]) for t in TYPES)


def test_plot_loss(tmp_path):
    ep = np.arange(1, 41)
    loss = 5 * np.exp(-ep / 8) + 0.2
    hist = pd.DataFrame({"epoch": ep, "loss": loss, "recon": loss * 0.9, "kl": loss * 0.02})
    p = tmp_path / "loss.png"
    plots.plot_loss(hist, str(p))
    _check_png(p)
    plots.plot_loss(hist, str(p), best_epoch=20)
    _check_png(p)
    plots.plot_loss(hist.iloc[:0], str(tmp_path / "empty.png"))  # no crash on no history
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_cellprop_uses_shared_palette(tmp_path):
    props = pd.DataFrame({"n_reference": [50, 30, 20, 0, 5], "n_target": [10, 10, 10, 10, 10],
                          "n_generated": [10, 10, 10, 10, 10], "n_filtered": [9, 10, 0, 10, 8]},
                         index=pd.Index(TYPES, name="celltype"))
    for s in ("reference", "target", "generated", "filtered"):
        props[s] = props[f"n_{s}"] / props[f"n_{s}"].sum()
    p = tmp_path / "cellprop.png"
    pal = plots.celltype_palette(TYPES)
    plots.plot_cellprop(props, str(p), title="G", palette=pal)
    px = _check_png(p)
    assert all(_has_colour(px, pal[t]) for t in TYPES)


def test_plot_correlation_with_nan(tmp_path):
    rng = np.random.default_rng(1)
    m = pd.DataFrame(rng.uniform(-1, 1, (5, 4)), index=TYPES, columns=TYPES[:4])
    m.iloc[2, 1] = np.nan
    p = tmp_path / "corr.png"
    plots.plot_correlation(m, str(p))
    px = _check_png(p)
    assert _has_colour(px, plots.MISSING_COLOUR, min_pixels=100)  # the NaN cell is grey


@pytest.mark.parametrize("with_sources", [False, True])
def test_plot_embedding(tmp_path, with_sources):
    rng = np.random.default_rng(2)
    labels = rng.choice(TYPES, 400)
    coords = rng.normal(size=(400, 2)) + np.array([TYPES.index(x) for x in labels])[:, None]
    sources = ["reference"] * 200 + ["generated"] * 200 if with_sources else None
    p = tmp_path / "mde.png"
    plots.plot_embedding(coords, labels, str(p), "MDE", sources=sources)
    px = _check_png(p)
    h, w, _ = px.shape
    if with_sources:
        assert w > 2 * h * 0.9  # two panels side by side
