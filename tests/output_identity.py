#!/usr/bin/env python3
"""Fingerprint a pipeline outdir and compare two of them: are the results byte-for-byte the same?

    .venv/bin/python tests/output_identity.py manifest OUTDIR [-o manifest.json]
    .venv/bin/python tests/output_identity.py compare A B

``manifest`` prints (or writes) a JSON manifest of OUTDIR: ``entries`` maps each result to an md5,
``excluded`` lists every file left out with the reason. ``compare`` takes two outdirs, or an outdir
and a manifest, or two manifests; it prints one line per difference (``differs``, ``only in A``,
``only in B``) and exits 1 if there is any, 0 if none.

What is fingerprinted:

- every table (``.csv``, ``.tsv``, ``.yaml``/``.yml``): md5 of the file's bytes;
- every ``.json`` result: md5 of its canonical form (sorted keys) without the keys that differ on
  every run (:data:`VOLATILE_KEYS`: run times, the work-dir path of checkpoints) and without its
  ``params`` object, which gets an entry
  of its own (``<path>#params``): the arguments a stage was called with, so a change of how a
  stage is called (a renamed argument, a default now written out) shows as one line apart from
  the results;
- ``vae.pth`` (and any ``.pth``): md5 of the file's bytes;
- every ``.h5ad``: ``X`` and ``layers['counts']`` (when present), each as its storage format,
  dtype, shape and the md5 of its arrays (sparse: data, indices, indptr after sorting the indices;
  dense: the C-ordered array). ``obs``/``uns`` are not compared (``uns`` carries the params).

Left out (:func:`excluded_reason`): ``pipeline_info/`` (Nextflow's trace, timeline and report,
timestamps and run names), the HTML report (it embeds the run's date and timings), images (``.png``,
``.svg``, ``.pdf``: not tables, and their bytes depend on the plotting library's version), logs and
the run-guard's lock and staging folder.

Intended use: before/after a change that should not alter results, on ONE machine with one
environment. Run the ``test`` profile on the old code and the new code (same ``--outdir`` layout)
and ``compare`` the two outdirs. The md5 of float tables and of ``vae.pth`` depends on the CPU
(instruction set, BLAS kernels) and library versions, so a manifest made on one machine is not
expected to match another's; none is committed for that reason. Two runs of the same code on one
machine give identical manifests (every random step is seeded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

#: JSON keys dropped before hashing: they differ between two runs of the same code (run times, and
#: TRAIN_VAE's ``checkpoint_dir``, a folder under the launch directory's Nextflow work dir).
VOLATILE_KEYS: frozenset[str] = frozenset({"seconds", "seconds_per_epoch", "checkpoint_dir"})

TABLE_SUFFIXES = (".csv", ".tsv", ".yaml", ".yml")
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg")


def excluded_reason(rel: str) -> str | None:
    """Why the file at outdir-relative path ``rel`` is left out of the manifest (None: it is kept)."""
    parts = rel.split("/")
    name = parts[-1]
    if parts[0] == "pipeline_info":
        return "Nextflow's run records (trace, timeline, report, params.json): timestamps, run names, durations"
    if parts[0].startswith(".nf-bulk2single") or name.startswith(".nf-bulk2single"):
        return "run guard's lock / staging folder: exists only during a run"
    if name.endswith(".html"):
        return "HTML report: embeds the run's date and timings, and images"
    if name.endswith(IMAGE_SUFFIXES):
        return "image, not a table: bytes depend on the plotting library"
    if name.endswith((".log", ".err", ".out")):
        return "log: timings and timestamps"
    if name.endswith(TABLE_SUFFIXES + (".json", ".pth", ".h5ad")):
        return None
    return "not a result table, weights or h5ad"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _strip(obj: Any) -> Any:
    """``obj`` without the :data:`VOLATILE_KEYS` at any depth."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def json_entries(rel: str, path: Path) -> dict[str, str]:
    """Entries for one JSON file: its results, and its ``params`` object apart."""
    obj = json.loads(path.read_text())
    out = {}
    if isinstance(obj, dict) and "params" in obj:
        out[f"{rel}#params"] = _md5(_canonical(_strip(obj["params"])))
        obj = {k: v for k, v in obj.items() if k != "params"}
    out[rel] = _md5(_canonical(_strip(obj)))
    return out


def matrix_fingerprint(m: Any) -> str:
    """Format, dtype, shape and md5 of a dense or sparse matrix, e.g. ``csr float32 60x500 <md5>``."""
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(m):
        fmt = m.format
        c = m.copy()
        c.sort_indices()
        h = hashlib.md5()
        for a in (c.data, c.indices, c.indptr):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((fmt, str(c.dtype), c.shape)).encode())
    else:
        a = np.ascontiguousarray(np.asarray(m))
        fmt, h = "dense", hashlib.md5(a.tobytes())
        h.update(repr((fmt, str(a.dtype), a.shape)).encode())
    return f"{fmt} {m.dtype} {m.shape[0]}x{m.shape[1]} {h.hexdigest()}"


def h5ad_entries(rel: str, path: Path) -> dict[str, str]:
    """Entries for one h5ad: ``<path>:X`` and ``<path>:layers/counts``."""
    import anndata as ad

    a = ad.read_h5ad(path)
    out = {f"{rel}:X": "none" if a.X is None else matrix_fingerprint(a.X)}
    if "counts" in a.layers:
        out[f"{rel}:layers/counts"] = matrix_fingerprint(a.layers["counts"])
    return out


def manifest(outdir: str | Path) -> dict[str, Any]:
    """The manifest of ``outdir``: ``{"entries": {key: fingerprint}, "excluded": {path: reason}}``."""
    root = Path(outdir)
    if not root.is_dir():
        raise SystemExit(f"ERROR: {root} is not a folder: give the --outdir of a finished run")
    entries: dict[str, str] = {}
    excluded: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        reason = excluded_reason(rel)
        if reason is not None:
            excluded[rel] = reason
        elif rel.endswith(".json"):
            entries.update(json_entries(rel, path))
        elif rel.endswith(".h5ad"):
            entries.update(h5ad_entries(rel, path))
        else:
            entries[rel] = _md5(path.read_bytes())
    return {"entries": entries, "excluded": excluded}


def load(source: str | Path) -> dict[str, Any]:
    """A manifest from an outdir or from a manifest JSON file."""
    p = Path(source)
    if p.is_file():
        m = json.loads(p.read_text())
        if "entries" not in m:
            raise SystemExit(f"ERROR: {p} is not a manifest (no 'entries'): make one with `manifest OUTDIR -o FILE`")
        return m
    return manifest(p)


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """One line per difference between manifests ``a`` and ``b`` (empty: identical)."""
    ea, eb = a["entries"], b["entries"]
    lines = []
    for k in sorted(set(ea) | set(eb)):
        if k not in eb:
            lines.append(f"only in A: {k}")
        elif k not in ea:
            lines.append(f"only in B: {k}")
        elif ea[k] != eb[k]:
            lines.append(f"differs: {k}: {ea[k]} vs {eb[k]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pm = sub.add_parser("manifest", help="print or write the manifest of an outdir")
    pm.add_argument("outdir")
    pm.add_argument("-o", "--output", help="write the manifest here instead of stdout")
    pc = sub.add_parser("compare", help="compare two outdirs / manifests; exit 1 on any difference")
    pc.add_argument("a")
    pc.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "manifest":
        text = json.dumps(manifest(args.outdir), indent=1, sort_keys=True) + "\n"
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    a, b = load(args.a), load(args.b)
    lines = compare(a, b)
    for line in lines:
        print(line)
    n = len(set(a["entries"]) | set(b["entries"]))
    print(f"{len(lines)} difference(s) in {n} entries" if lines else f"identical: {n} entries")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
