"""Small helpers shared by the unit tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """Import a script that is not a module (e.g. ``bin/qc.py``) so its ``main(argv)`` can be called."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pbmc_model_input() -> ad.AnnData:
    """scanpy's bundled pbmc68k_reduced as a model input: log-normalised CSR X, obs['celltype'] = bulk_labels."""
    pb = sc.datasets.pbmc68k_reduced()
    return ad.AnnData(
        X=sp.csr_matrix(pb.raw.X, dtype=np.float32),
        obs=pd.DataFrame({"celltype": pd.Categorical(pb.obs["bulk_labels"].astype(str))}, index=pb.obs_names.copy()),
        var=pd.DataFrame(index=pb.raw.var_names.copy()),
    )


# --------------------------------------------------------------------------------------------
# what the pipeline passes to each stage script (conf/modules.config ext.args, the modules' script
# blocks) and the pipeline's defaults (nextflow_schema.json): the tests call the scripts with the
# same arguments, without a third copy of the defaults
# --------------------------------------------------------------------------------------------
def _schema_defaults() -> dict:
    import json

    def props(node):
        out = {}
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    out.update({k: v for k, v in value.items() if isinstance(v, dict)})
                out.update(props(value))
        return out

    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    return {name: prop["default"] for name, prop in props(schema).items() if "default" in prop}


def ext_args(process: str) -> list[tuple[str, str, bool]]:
    """``(option, value expression, always)`` of each entry of ``process``' ext.args in
    conf/modules.config; ``always``: not behind a ``params.x ? ... : ''`` condition."""
    import re

    text = (REPO / "conf" / "modules.config").read_text()
    if f"withName: '{process}'" not in text:
        return []
    start = text.index(f"withName: '{process}'")
    after = text.find("withName:", start + 1)
    section = text[start:after if after >= 0 else len(text)]  # this process' block only
    if "ext.args = { [" not in section:
        return []
    block = section[section.index("ext.args = { [") + len("ext.args = { ["):]
    block = block[:block.index("].join")]
    out = []
    for line in block.splitlines():
        line = line.strip().rstrip(",")
        if not line or line.startswith("//"):
            continue
        m = re.search(r'"--(\w+)(?: \'?\$\{(.*)\}\'?)?"', line)
        if m is None:
            raise ValueError(f"conf/modules.config {process}: cannot read ext.args entry {line!r}")
        out.append((m.group(1), m.group(2) or "", line.startswith('"')))
    return out


def module_args(process: str) -> tuple[str, list[str], list[str]]:
    """``(script, always, conditional)`` of ``process``' module (modules/local/<name>/main.nf): the
    script it runs and the options its script block always / conditionally passes (ext.args aside)."""
    import re

    for path in sorted((REPO / "modules" / "local").glob("*/main.nf")):
        text = path.read_text()
        if re.search(rf"^process {process} \{{", text, re.M):
            break
    else:
        raise ValueError(f"no module runs process {process}")
    script = text[text.index("    script:"):text.index("    stub:")]
    head, command = script.split('"""', 1)[0], script.split('"""')[1]
    name = command.split()[0]
    return name, re.findall(r"--(\w+)", command), re.findall(r"--(\w+)", head)


def _default_of(expr: str, defaults: dict) -> str:
    """The value of a ``${...}`` expression of ext.args with the pipeline's defaults: ``params.x``."""
    import re

    m = re.fullmatch(r"params\.(\w+)", expr.strip())
    if m:
        return str(defaults[m.group(1)])
    raise ValueError(f"cannot evaluate ext.args expression {expr!r}")


def pipeline_args(process: str) -> list[str]:
    """The arguments ``process``' ext.args always passes, with the pipeline's defaults
    (nextflow_schema.json), e.g. ``['--leiden_size', '25', '--engine', 'native', '--seed', '42']``.
    Put them first: a test's own value of the same option, later on the command line, wins."""
    defaults = _schema_defaults()
    out = []
    for option, expr, always in ext_args(process):
        if always:
            out += [f"--{option}", _default_of(expr, defaults)]
    return out


def write_bulk_inputs(directory: Path, cells: ad.AnnData, groups: tuple[str, ...] = ("G",),
                      samples_per_group: int = 2) -> tuple[str, str]:
    """PREPARE_INPUTS-like ``bulk_counts.tsv`` and ``groups.csv`` in ``directory`` for the stages that
    always get them (GENERATE, QC): each sample the summed counts of ``cells`` (X log1p-normalised,
    expm1'd), scaled by 1 + its number / 10; returns their paths."""
    dense = cells.X.toarray() if sp.issparse(cells.X) else np.asarray(cells.X)
    total = np.expm1(dense).sum(axis=0)
    names = [f"{g}_{i}" for g in groups for i in range(samples_per_group)]
    counts = pd.DataFrame({s: np.rint(total * (1 + k / 10)).astype(np.int64) for k, s in enumerate(names)},
                          index=pd.Index(list(map(str, cells.var_names)), name="gene"))
    bulk, sheet = Path(directory) / "bulk_counts.tsv", Path(directory) / "groups.csv"
    counts.to_csv(bulk, sep="\t")
    pd.DataFrame({"group": [s.rsplit("_", 1)[0] for s in names], "sample": names}).to_csv(sheet, index=False)
    return str(bulk), str(sheet)
