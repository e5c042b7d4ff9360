"""Every matplotlib figure of the pipeline.

All figures use the non-interactive Agg backend, are written as PNG at ~120 dpi, and colour cell
types through :func:`celltype_palette`, so one cell type has the same colour in every plot of a
run (the palette depends only on the set of names, not on the order they are passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib

from b2s._constants import CELLTYPE, GROUP

matplotlib.use("Agg")  # headless tasks (HPC, containers) have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

DPI = 120
MISSING_COLOUR = "#bdbdbd"

# Qualitative palette (tab20 reordered so the first 10 colours are the saturated ones).
_BASE = [to_hex(c) for c in plt.get_cmap("tab20").colors]
_BASE = _BASE[0::2] + _BASE[1::2]


def _sort_key(name: str) -> str:
    """Plain lexicographic order: the order AnnData gives categorical cell types."""
    return str(name)


def celltype_palette(celltypes: Iterable[str]) -> dict[str, str]:
    """Map each cell type to a hex colour, independent of input order.

    Names are de-duplicated and sorted before colours are assigned, so any caller that
    passes the same set of types (e.g. the reference's types) gets the same colours.
    """
    names = sorted({str(c) for c in celltypes}, key=_sort_key)
    if len(names) <= len(_BASE):
        colours = _BASE[: len(names)]
    else:  # many types: evenly spaced hues, still deterministic
        colours = [to_hex(plt.get_cmap("hsv")(i / len(names))) for i in range(len(names))]
    return dict(zip(names, colours))


def _colours(names: Sequence[str], palette: dict[str, str] | None) -> list[str]:
    pal = palette if palette is not None else celltype_palette(names)
    return [pal.get(str(n), MISSING_COLOUR) for n in names]


def _legend_outside(ax: plt.Axes, title: str = "cell type") -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False, fontsize=8, title_fontsize=9)


def _save(fig: plt.Figure, path: str) -> None:
    # bbox_inches='tight' keeps outside legends and long tick labels inside the image
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def _stacked_barh(ax: plt.Axes, frac: pd.DataFrame, palette: dict[str, str] | None) -> None:
    """Horizontal stacked bars: one bar per row of ``frac``, one segment per column."""
    cols = [str(c) for c in frac.columns]
    colours = _colours(cols, palette)
    left = np.zeros(len(frac))
    y = np.arange(len(frac))
    values = frac.to_numpy(dtype=float)
    values = np.nan_to_num(values, nan=0.0)
    for j, (name, colour) in enumerate(zip(cols, colours)):
        ax.barh(y, values[:, j], left=left, color=colour, label=name, edgecolor="white",
                linewidth=0.4, height=0.8)
        left += values[:, j]
    ax.set_yticks(y, [str(i) for i in frac.index])
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlim(0, max(1.0, float(left.max()) if len(left) else 1.0))
    ax.spines[["top", "right"]].set_visible(False)


def plot_fractions(fractions: pd.DataFrame, path: str, title: str = "",
                   palette: dict[str, str] | None = None) -> None:
    """Stacked horizontal bars of cell-type fractions, one bar per row (group or sample).

    ``fractions``: index = group/sample, columns = cell types, rows summing to ~1.
    """
    n = max(len(fractions), 1)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * n))
    _stacked_barh(ax, fractions, palette)
    ax.set_xlabel("fraction")
    ax.set_ylabel(fractions.index.name or "")
    ax.set_title(title or "Estimated cell-type fractions")
    _legend_outside(ax)
    _save(fig, path)


def plot_loss(history: pd.DataFrame, path: str, best_epoch: int | None = None) -> None:
    """Training curves (total loss, reconstruction, KL) per epoch with the best epoch marked.

    ``history`` has columns ``epoch, loss, recon, kl``. The best epoch is ``best_epoch`` if given,
    else the epoch of minimal ``loss``. The y axis is logarithmic when values span > 10x.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    if history.empty:
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        _save(fig, path)
        return
    epochs = history["epoch"].to_numpy()
    styles = {"loss": ("total loss", "-", 2.0, "#1f77b4"),
              "recon": ("reconstruction (MSE)", "--", 1.3, "#2ca02c"),
              "kl": ("KL", ":", 1.3, "#d62728")}
    plotted = []
    for col, (label, ls, lw, colour) in styles.items():
        if col in history:
            vals = history[col].to_numpy(dtype=float)
            ax.plot(epochs, vals, ls, lw=lw, color=colour, label=label)
            plotted.append(vals)
    allv = np.concatenate(plotted) if plotted else np.array([])
    allv = allv[np.isfinite(allv)]
    if allv.size and allv.min() > 0 and allv.max() / allv.min() > 10:
        ax.set_yscale("log")
    if best_epoch is None and "loss" in history:
        best_epoch = int(history["epoch"].iloc[int(np.nanargmin(history["loss"].to_numpy()))])
    if best_epoch is not None and "loss" in history:
        row = history.loc[history["epoch"] == best_epoch, "loss"]
        ax.axvline(best_epoch, color="grey", lw=0.8, ls="-.")
        if len(row):
            ax.plot([best_epoch], [float(row.iloc[0])], "o", color="black", ms=6,
                    label=f"best epoch {best_epoch} (loss {float(row.iloc[0]):.4g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Beta-VAE training loss")
    ax.spines[["top", "right"]].set_visible(False)
    _legend_outside(ax, title="")
    _save(fig, path)


def plot_cellprop(props: pd.DataFrame, path: str, title: str = "",
                  palette: dict[str, str] | None = None) -> None:
    """Cell-type proportions of reference, target, generated and filtered cells as stacked bars.

    ``props``: index = cell type; fraction columns among ``reference, target, generated,
    filtered`` (as returned by :func:`b2s.qc.metrics.celltype_proportions`); optional ``n_<source>``
    count columns are shown in the bar labels.
    """
    sources = [s for s in ("reference", "target", "generated", "filtered") if s in props]
    frac = props[sources].T.astype(float)
    labels = []
    for s in sources:
        ncol = f"n_{s}"
        labels.append(f"{s} (n={int(props[ncol].sum())})" if ncol in props else s)
    frac.index = labels
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(sources)))
    _stacked_barh(ax, frac, palette)
    ax.set_xlabel("fraction of cells")
    ax.set_title(title or "Cell-type proportions")
    _legend_outside(ax)
    _save(fig, path)


def plot_correlation(corr: pd.DataFrame, path: str, title: str = "") -> None:
    """Annotated heatmap of Pearson r: reference types (rows) x generated types (columns)."""
    nr, nc = corr.shape
    fig, ax = plt.subplots(figsize=(2.2 + 0.6 * max(nc, 1), 1.8 + 0.45 * max(nr, 1)))
    values = corr.to_numpy(dtype=float)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=MISSING_COLOUR)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(nc), [str(c) for c in corr.columns], rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(np.arange(nr), [str(i) for i in corr.index])
    if nr * nc <= 900:  # annotations stay readable up to ~30 x 30
        for i in range(nr):
            for j in range(nc):
                v = values[i, j]
                txt = "NA" if not np.isfinite(v) else f"{v:.2f}"
                colour = "white" if np.isfinite(v) and abs(v) > 0.6 else "black"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("generated cells")
    ax.set_ylabel("scRNA-seq reference")
    ax.set_title(title or "Marker expression correlation (Pearson r)")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("Pearson r")
    _save(fig, path)


def plot_embedding(coords: np.ndarray, labels: Sequence[str], path: str, title: str = "",
                   sources: Sequence[str] | None = None,
                   palette: dict[str, str] | None = None) -> None:
    """Scatter of a 2-D embedding coloured by cell type.

    With ``sources`` (e.g. 'reference'/'generated' per point) one panel per source is drawn on
    shared axes, so both sets are visible without overplotting each other.
    """
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray([str(x) for x in labels])
    pal = palette if palette is not None else celltype_palette(labels)
    if sources is None:
        src = np.full(len(labels), "", dtype=object)
        panels = [""]
    else:
        src = np.asarray([str(s) for s in sources], dtype=object)
        panels = list(dict.fromkeys(src))  # order of first appearance
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.2, 4.6),
                             sharex=True, sharey=True, squeeze=False)
    axes = axes[0]
    order = sorted(set(labels), key=_sort_key)
    for ax, panel in zip(axes, panels):
        mask = src == panel
        size = float(np.clip(4000.0 / max(int(mask.sum()), 1), 3, 30))
        for name in order:
            m = mask & (labels == name)
            # every type gets a legend entry (also if absent from this panel) for a full key
            ax.scatter(coords[m, 0], coords[m, 1], s=size, color=pal.get(name, MISSING_COLOUR),
                       label=name, linewidths=0, alpha=0.8, rasterized=True)
        ax.set_title(f"{panel} (n={int(mask.sum())})" if panel else f"n={int(mask.sum())}",
                     fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("MDE 1")
    axes[0].set_ylabel("MDE 2")
    _legend_outside(axes[-1])
    leg = axes[-1].get_legend()
    if leg is not None:
        for h in leg.legend_handles:
            h.set_sizes([30])
    fig.suptitle(title or "Embedding", y=1.0)
    _save(fig, path)


def plot_bulk_scatter(log_cpm: pd.DataFrame, path: str, title: str = "",
                      scores: pd.DataFrame | None = None, n_label: int = 8) -> None:
    """Generated pseudo-bulk vs the group's bulk (log2 CPM per gene), beside the composition-only expectation.

    ``log_cpm``: columns ``bulk_log2cpm``, ``generated_log2cpm`` and optionally
    ``composition_expected_log2cpm`` (:func:`b2s.qc.bulk.bulk_qc`); ``scores``: its summary frame
    (Pearson r and variance explained shown in the panel titles). The ``n_label`` genes furthest
    from the diagonal in the generated panel are named.
    """
    panels = [c for c in ("generated", "composition_expected") if f"{c}_log2cpm" in log_cpm]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.4), squeeze=False,
                             sharex=True, sharey=True)
    x = log_cpm["bulk_log2cpm"].to_numpy(float)
    by = scores.set_index("profile") if scores is not None else None
    hi = float(np.nanmax(np.r_[x, *(log_cpm[f"{c}_log2cpm"].to_numpy(float) for c in panels)])) if len(x) else 1.0
    for ax, name in zip(axes[0], panels):
        y = log_cpm[f"{name}_log2cpm"].to_numpy(float)
        ax.scatter(x, y, s=4, color="#1f77b4" if name == "generated" else "#7f7f7f", alpha=0.4,
                   linewidths=0, rasterized=True)
        ax.plot([0, hi], [0, hi], color="black", lw=0.8, ls="--")
        label = "generated cells" if name == "generated" else "composition only (reference x fractions)"
        if by is not None and name in by.index and pd.notna(by.loc[name, "pearson_r"]):
            label += f"\nr = {by.loc[name, 'pearson_r']:.3f}, R² = {by.loc[name, 'var_explained']:.3f}"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("bulk, log2(CPM + 1)")
        if name == "generated" and n_label > 0 and len(x):
            far = np.argsort(-np.abs(y - x), kind="stable")[:n_label]
            for i in far:
                ax.annotate(str(log_cpm.index[i]), (x[i], y[i]), fontsize=6, alpha=0.8)
    axes[0][0].set_ylabel("pseudo-bulk, log2(CPM + 1)")
    fig.suptitle(title or "Pseudo-bulk vs bulk", y=1.0)
    _save(fig, path)


def plot_composition_contrast(table: pd.DataFrame, path: str, title: str = "") -> None:
    """Change of each type's fraction per group (b2s.qc.composition): points with 95 % intervals,
    one panel per group; filled where the interval excludes 0."""
    groups = list(pd.unique(table[GROUP]))
    types = sorted(pd.unique(table[CELLTYPE]), key=_sort_key)
    pal = celltype_palette(types)
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1.5, 0.32 * len(types) + 1.4),
                             sharey=True, squeeze=False)
    for ax, g in zip(axes[0], groups):
        rows = table[table[GROUP] == g].set_index(CELLTYPE).reindex(types)
        y = np.arange(len(types))
        ax.axvline(0.0, color="#777777", lw=0.8)
        for i, t in enumerate(types):
            r = rows.loc[t]
            if pd.isna(r["change"]):
                continue
            ax.plot([r["ci_low"], r["ci_high"]], [i, i], color=pal[t], lw=2)
            ax.scatter([r["change"]], [i], color=pal[t] if bool(r["excludes_0"]) else "white",
                       edgecolor=pal[t], zorder=3, s=30)
        ax.set_yticks(y, types, fontsize=8)
        ax.set_title(f"{g} vs {rows['versus'].dropna().iloc[0] if rows['versus'].notna().any() else ''}", fontsize=9)
        ax.set_xlabel("change of fraction")
    axes[0][0].invert_yaxis()  # shared: first type on top
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
