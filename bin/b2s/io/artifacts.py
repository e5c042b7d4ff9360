"""Stage outputs and their provenance: JSON results, h5ad files with params, input guards."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from b2s._constants import GROUP, SAMPLE, UNS_KEY
from b2s.errors import InputError
from b2s.files import atomic_write
from b2s.io.bulk import UNIT_HEADERS


# --------------------------------------------------------------------------------------------
# outputs and provenance (used by every stage)
# --------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    """JSON encoder for numpy scalars/arrays, paths and sets."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_prepared(bulk_path: str | os.PathLike, groups_path: str | os.PathLike,
                  reference_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, ad.AnnData]:
    """Read the files PREPARE_INPUTS wrote (already validated): bulk (``attrs['units']`` from its
    header, :data:`UNIT_HEADERS`), groups, reference."""
    bulk = pd.read_csv(bulk_path, sep="\t", index_col=0)
    units = {v: k for k, v in UNIT_HEADERS.items()}.get(str(bulk.index.name), "counts")
    bulk.index = bulk.index.astype(str)
    bulk.columns = bulk.columns.astype(str)
    groups = pd.read_csv(groups_path, dtype=str)
    if not {GROUP, SAMPLE} <= set(groups.columns):
        raise InputError(f"--groups {groups_path}: needs columns group,sample (found: {', '.join(groups.columns)}); "
                         "use the groups.csv written by PREPARE_INPUTS")
    bulk.attrs["units"] = units
    return bulk, groups, ad.read_h5ad(reference_path)


def params_from_args(args: Any) -> dict[str, Any]:
    """An argparse Namespace (or mapping) as a JSON-ready params dict."""
    items = vars(args).items() if not isinstance(args, Mapping) else args.items()
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in items}


def write_json(path: str | os.PathLike, obj: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
    """Write ``obj`` as pretty JSON (atomically); ``params`` is stored under ``"params"``.

    Raises ValueError when neither ``obj`` nor ``params`` supplies ``"params"`` (the contract
    requires every JSON output to record its parameters).
    """
    data = dict(obj)
    if params is not None:
        data["params"] = dict(params)
    if "params" not in data:
        raise ValueError(f"{path}: JSON outputs must carry a 'params' object")
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def package_versions(
    packages: Iterable[str] = ("numpy", "pandas", "scipy", "anndata", "scanpy", "torch"),
) -> dict[str, str]:
    """Installed versions of ``packages`` from distribution metadata (no imports)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance(params: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """Provenance block for outputs: stage, params, b2s and package versions (no timestamps,
    so identical runs give identical files)."""
    import b2s

    return {"stage": stage, "b2s_version": b2s.__version__, "versions": package_versions(),
            "params": dict(params)}


def set_uns_params(adata: ad.AnnData, params: Mapping[str, Any]) -> ad.AnnData:
    """Store ``params`` as a JSON string in ``adata.uns['b2s']`` (h5ad-safe); returns ``adata``."""
    adata.uns[UNS_KEY] = json.dumps(dict(params), sort_keys=True, default=_json_default)
    return adata


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike, params: Mapping[str, Any] | None = None,
               compression: str | None = "gzip") -> None:
    """Write ``adata`` atomically (never through a symlinked input); sets ``uns['b2s']`` if ``params``."""
    if params is not None:
        set_uns_params(adata, params)
    if UNS_KEY not in adata.uns:
        raise ValueError(f"{path}: h5ad outputs must carry uns['b2s'] (pass params)")
    atomic_write(Path(path), lambda tmp: adata.write_h5ad(tmp, compression=compression))


def guard_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]) -> None:
    """InputError when an output would replace an input file itself (not a symlink to it).

    Nextflow stages inputs as symlinks, which atomic writes replace safely; a real file at the
    output path that IS an input means ``--outdir`` points at the input folder.
    """
    real_inputs = [Path(i) for i in inputs if i]
    for out in outputs:
        o = Path(out)
        if not o.exists() or o.is_symlink():
            continue
        for i in real_inputs:
            if i.exists() and os.path.samefile(o, i):
                raise InputError(f"--outdir {o.parent}: writing {o.name} would overwrite the input {i}; "
                                 "choose another --outdir")
