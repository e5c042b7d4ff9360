"""What a ``vae.pth`` was trained with: a JSON sidecar beside it, and the one check of it.

TRAIN_VAE writes ``vae.pth`` (a plain state dict, so omicverse still loads it) and beside it
``vae.pth.json`` with the model genes in order and the model settings. :func:`check_weights`
compares that with the genes a run will feed the weights and returns how to reorder the
gene-facing layers, or raises a one-line :class:`~b2s.errors.InputError`.

This module uses the Python standard library only: the head-node preflight runs plain
``python3`` without torch. Reordering the tensors is :func:`b2s.model.vae.reorder_genes`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from b2s.errors import InputError, warn
from b2s.files import atomic_write_text

#: Format tag of the sidecar (bumped when its meaning changes).
SIDECAR_FORMAT = "b2s-vae-weights/1"
SIDECAR_SUFFIX = ".json"


def sidecar_path(path: str | os.PathLike) -> str:
    """``vae.pth`` -> ``vae.pth.json`` (a ``.json`` path is returned unchanged)."""
    path = os.fspath(path)
    return path if path.endswith(SIDECAR_SUFFIX) else path + SIDECAR_SUFFIX


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sidecar(pth_path: str | os.PathLike, genes: Sequence[str], hidden_size: int,
                  settings: Mapping[str, Any] | None = None) -> str:
    """Write ``<pth_path>.json`` (atomically) describing the weights at ``pth_path``; returns its path.

    ``genes`` are the model-input columns in order (the encoder's input columns and the decoder's
    output rows); ``settings`` are extra facts (engine, reparam, trainer code, seed, ...).
    """
    genes = [str(g) for g in genes]
    out = sidecar_path(pth_path)
    data = {
        "format": SIDECAR_FORMAT,
        "weights_file": os.path.basename(os.fspath(pth_path)),
        "weights_sha256": file_sha256(pth_path),
        "n_genes": len(genes),
        "hidden_size": int(hidden_size),
        **dict(settings or {}),
        "genes": genes,
    }
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")
    return out


def read_sidecar(path: str | os.PathLike, what: str = "--vae_weights") -> dict[str, Any] | None:
    """The sidecar of ``path`` (a ``.pth`` or its ``.json``) as a dict; None when there is none.

    Raises:
        InputError: the sidecar is unreadable or malformed, or no longer describes the ``.pth``
            beside it (its checksum differs: the weights were replaced).
    """
    side = sidecar_path(path)
    if not os.path.isfile(side):
        return None
    try:
        with open(side, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{what} {side}: the weights' sidecar cannot be read ({type(err).__name__}); "
                         "restore it from the run that trained the weights or delete it") from None
    genes = data.get("genes") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or not isinstance(genes, list)
            or len(genes) != data.get("n_genes") or not isinstance(data.get("hidden_size"), int)):
        raise InputError(f"{what} {side}: not a vae.pth sidecar of this pipeline (format {SIDECAR_FORMAT}, "
                         "genes, n_genes, hidden_size); restore it from the run that trained the weights or delete it")
    pth = side[: -len(SIDECAR_SUFFIX)]
    if os.path.isfile(pth) and data.get("weights_sha256") and file_sha256(pth) != data["weights_sha256"]:
        raise InputError(f"{what} {pth}: the file differs from the one its sidecar {os.path.basename(side)} "
                         "describes (checksum); pass the sidecar written with these weights or delete the stale one")
    return data


def _examples(values: Sequence[str], n: int = 3) -> str:
    vals = [str(v) for v in values]
    return ", ".join(vals[:n]) + (", ..." if len(vals) > n else "")


def subset_positions(sidecar_or_pth_path: str | os.PathLike, genes: Sequence[str],
                     what: str = "--vae_weights") -> list[int] | None:
    """Where the VAE's genes sit in ``genes`` (the model input, in order) when its sidecar says it
    models a subset of the model input (``--vae_genes``, TRAIN_VAE); None when it models them all.

    Raises:
        InputError: a VAE gene is not in the model input.
    """
    path = os.fspath(sidecar_or_pth_path)
    meta = read_sidecar(path, what) if os.path.isfile(sidecar_path(path)) else None
    if not meta or not meta.get("gene_subset"):
        return None
    pos = {str(g): i for i, g in enumerate(genes)}
    missing = [g for g in meta["genes"] if str(g) not in pos]
    if missing:
        raise InputError(f"{what} {path} models {len(meta['genes'])} genes, {len(missing)} of them not in this run's "
                         f"model input (e.g. {_examples(missing)}); use the reference, bulk and --gene_map the weights "
                         "were trained with, or drop --vae_weights to retrain")
    return [pos[str(g)] for g in meta["genes"]]


def check_weights(sidecar_or_pth_path: str | os.PathLike, genes: Sequence[str] | None = None,
                  hidden_size: int | None = None, reparam: str | None = None,
                  what: str = "--vae_weights", warn_fn: Callable[[str], None] = warn) -> list[int] | None:
    """Check that the weights at ``sidecar_or_pth_path`` fit ``genes`` (model-input order) and settings.

    Args:
        sidecar_or_pth_path: ``vae.pth`` or its ``vae.pth.json``.
        genes: the model-input genes in order; None (head-node preflight, before PREPROCESS has
            chosen the genes) checks only the sidecar and the settings.
        hidden_size: the run's ``--hidden_size`` (None: not checked).
        reparam: the run's ``--reparam`` (a different one gives a warning: the weights work, but
            were trained with the other sampling form).
        warn_fn: where warnings go (default: a ``WARNING:`` line on stderr, :func:`b2s.errors.warn`).

    Returns:
        None when the weights can be used as they are (or, without a sidecar, when the gene order
        cannot be verified: a ``WARNING`` line says so and the caller checks the sizes), else
        ``index`` with ``file_genes[index[j]] == genes[j]``: the rows to take from the gene-facing
        layers (:func:`b2s.model.vae.reorder_genes`).

    Raises:
        InputError: one line naming the file, what does not fit and the fix.
    """
    path = os.fspath(sidecar_or_pth_path)
    pth = path[: -len(SIDECAR_SUFFIX)] if path.endswith(SIDECAR_SUFFIX) else path
    if not os.path.isfile(pth):
        raise InputError(f"{what} {pth}: file not found; pass the vae.pth written by TRAIN_VAE")
    meta = read_sidecar(path, what)
    if meta is None:
        warn_fn(f"{what} {pth}: no sidecar {os.path.basename(sidecar_path(pth))} beside it (weights from omicverse "
             "or an older run): sizes are checked, the gene order cannot be verified; the weights must come "
             "from the same reference and bulk genes")
        return None
    if hidden_size is not None and int(meta["hidden_size"]) != int(hidden_size):
        raise InputError(f"{what} {pth} has hidden_size {meta['hidden_size']}, --hidden_size is {hidden_size}; "
                         f"pass --hidden_size {meta['hidden_size']}")
    if reparam is not None and meta.get("reparam") not in (None, reparam):
        warn_fn(f"{what} {pth} was trained with --reparam {meta['reparam']}, this run uses --reparam {reparam}; "
             f"pass --reparam {meta['reparam']} to generate as it was trained")
    if genes is None:
        return None
    genes = [str(g) for g in genes]
    file_genes = [str(g) for g in meta["genes"]]
    if genes == file_genes:
        return None
    pos = {g: i for i, g in enumerate(file_genes)}
    missing = [g for g in genes if g not in pos]
    extra_set = set(file_genes) - set(genes)
    if missing or extra_set or len(genes) != len(file_genes):
        extra = [g for g in file_genes if g in extra_set]
        raise InputError(
            f"{what} {pth} was trained on {len(file_genes)} genes, this run's model input has {len(genes)} "
            f"({len(missing)} not in the weights, e.g. {_examples(missing) or '-'}; {len(extra)} only in the weights, "
            f"e.g. {_examples(extra) or '-'}); use the reference, bulk and --gene_map the weights were trained "
            "with, or drop --vae_weights to retrain"
        )
    warn_fn(f"{what} {pth}: the weights list the same {len(genes)} genes in another order than the model input; "
         "their gene-facing layers are reordered to match")
    return [pos[g] for g in genes]
