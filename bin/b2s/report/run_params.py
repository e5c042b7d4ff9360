"""The parameters a run used (REPORT): the params as given, with each value that a stage or the
workflow decided (``auto`` or unset: the fraction method, the epochs, the device, the groups per
task...) replaced by the value used, read from the stage summaries REPORT receives.

:data:`DECIDED` is the one table of those parameters: which stage decides, and in which file and
key the value it used is recorded. :func:`resolve_params` applies it and returns what REPORT
shows in the report's parameter table and :func:`write_params` writes to
``pipeline_info/params.json`` and ``params_decided.json`` (docs/output.md)::

    {"bulk": "...", "fraction_method": "wls", "epoch_num": 600, ...,   # the values used
     "decided": {"fraction_method": {"given": null, "used": "wls", "by": "ESTIMATE_FRACTIONS",
                                     "from": "fractions_summary.json: method"}, ...}}

The top-level keys are every parameter of the run, each with the value used where a stage
recorded one that is a value of the parameter (else as given). ``decided`` holds one entry per
parameter whose value was decided (given ``auto`` or unset) or differs from the one given, with
both values; ``used`` is null and ``note`` says why when the file that records it was not found
(e.g. no train_summary.json with ``--vae_weights``): the top-level value is then the given one.

``--params`` of REPORT is the workflow's params.json: ``{"params": {...as given},
"workflow": {"groups_per_task": N, "executor": "local"}}`` (the values decided in Groovy), or a
plain object of params (read as given, nothing decided by the workflow).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from b2s._constants import FRACTIONS_SUMMARY_FILE, METRICS_SUFFIX, PREPARE_SUMMARY_FILE, TRAIN_SUMMARY_FILE
from b2s.errors import InputError
from b2s.files import atomic_write_text

#: the source of the values the workflow decided: REPORT's --params
WORKFLOW_SOURCE = "params.json"
#: the source of a value every group's file records
GROUP_METRICS = "<group>" + METRICS_SUFFIX

NOT_FOUND = object()


def _device(v: Any) -> Any:
    """``cuda:0`` -> ``cuda`` (the values of ``--device``)."""
    return str(v).split(":")[0] if v is not None else None


def _amp(v: Any) -> Any:
    """train_summary's precision (``fp32`` or ``bfloat16 autocast``) -> ``--amp`` off / on."""
    if not isinstance(v, str):
        return None
    return "on" if "autocast" in v else "off"


@dataclass(frozen=True)
class Decided:
    """One parameter whose value a stage (or the workflow) decides.

    ``source`` is the file name among REPORT's inputs (:data:`GROUP_METRICS`: every group's;
    :data:`WORKFLOW_SOURCE`: REPORT's ``--params``), ``key`` the path of keys inside it. ``is_value``: the
    recorded value is a value of the parameter (it replaces the given one at the top level of
    params.json); False for a rule (e.g. cell numbers from library sizes), recorded in ``decided``
    only, and only when the parameter was left unset.
    """

    param: str
    by: str
    source: str
    key: tuple[str, ...]
    convert: Callable[[Any], Any] | None = None
    is_value: bool = True

    @property
    def where(self) -> str:
        return f"{self.source}: {'.'.join(self.key)}"


DECIDED: tuple[Decided, ...] = (
    Decided("bulk_units", "PREPARE_INPUTS", PREPARE_SUMMARY_FILE, ("bulk", "units")),
    Decided("fraction_method", "ESTIMATE_FRACTIONS", FRACTIONS_SUMMARY_FILE, ("method",)),
    Decided("cells_per_group", "ESTIMATE_FRACTIONS", FRACTIONS_SUMMARY_FILE, ("cell_number_rule", "rule"),
            is_value=False),
    Decided("reference_group", "ESTIMATE_FRACTIONS", FRACTIONS_SUMMARY_FILE, ("composition_contrast", "versus"),
            is_value=False),
    Decided("batch_size", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("params", "batch_size")),
    Decided("learning_rate", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("params", "learning_rate")),
    Decided("epoch_num", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("params", "epoch_num")),
    Decided("vae_genes", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("params", "vae_genes")),
    Decided("checkpoint_dir", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("params", "checkpoint_dir")),
    Decided("device", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("device",), convert=_device),
    Decided("amp", "TRAIN_VAE", TRAIN_SUMMARY_FILE, ("extra", "precision"), convert=_amp),
    Decided("bulk_shift", "GENERATE", GROUP_METRICS, ("bulk_qc", "bulk_shift")),
    Decided("groups_per_task", "workflow", WORKFLOW_SOURCE, ("workflow", "groups_per_task")),
)


def read_given(path: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params as given, values the workflow decided)`` from REPORT's ``--params`` file; ({}, {})
    without one."""
    if not path:
        return {}, {}
    if not os.path.isfile(path):
        raise InputError(f"--params {path} does not exist; pass the params.json written by the pipeline")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except ValueError as err:
        raise InputError(f"--params {path} is not valid JSON ({err.msg} at line {err.lineno}); "
                         "pass the params.json written by the pipeline") from None
    if not isinstance(data, dict):
        raise InputError(f"--params {path} must hold a JSON object (found {type(data).__name__}); "
                         "pass the params.json written by the pipeline")
    if isinstance(data.get("params"), dict):
        workflow = data.get("workflow")
        return dict(data["params"]), {"workflow": dict(workflow)} if isinstance(workflow, dict) else {}
    return dict(data), {}


def _lookup(data: Any, key: tuple[str, ...]) -> Any:
    for k in key:
        if not isinstance(data, dict) or k not in data:
            return NOT_FOUND
        data = data[k]
    return data


def _read(path: Path | None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None


def _recorded(d: Decided, files: dict[str, Path], workflow: dict[str, Any]) -> tuple[Any, str | None]:
    """The value ``d`` records, or (NOT_FOUND, why)."""
    if d.source == WORKFLOW_SOURCE:
        value = _lookup(workflow, d.key)
        return (value, None) if value is not NOT_FOUND else (NOT_FOUND, f"{d.where} not given to REPORT")
    if d.source == GROUP_METRICS:
        suffix = METRICS_SUFFIX
        names = sorted(n for n in files if n.endswith(suffix) and len(n) > len(suffix))
        if not names:
            return NOT_FOUND, f"no {d.source} found"
        values = {n[: -len(suffix)]: _lookup(_read(files[n]), d.key) for n in names}
        found = {g: v for g, v in values.items() if v is not NOT_FOUND}
        if not found:
            return NOT_FOUND, f"{d.where} not recorded"
        distinct = {json.dumps(v, sort_keys=True) for v in found.values()}
        return (next(iter(found.values())) if len(distinct) == 1 else found), None
    data = _read(files.get(d.source))
    if data is None:
        return NOT_FOUND, f"{d.source} not found"
    value = _lookup(data, d.key)
    return (value, None) if value is not NOT_FOUND else (NOT_FOUND, f"{d.where} not recorded")


def is_unset(value: Any) -> bool:
    """The user left the decision to the pipeline (unset or ``auto``)."""
    return value is None or value == "auto"


def resolve_params(given: dict[str, Any], files: dict[str, Path],
                   workflow: dict[str, Any] | None = None,
                   table: tuple[Decided, ...] = DECIDED) -> dict[str, Any]:
    """The params the run used and a ``decided`` object (module docstring). ``files``: REPORT's
    inputs by file name (b2s.report.inputs.index_files); ``workflow``: ``{"workflow": {...}}``
    from :func:`read_given`. A missing or unreadable file leaves the given value, noted."""
    used = dict(given)
    decided: dict[str, dict[str, Any]] = {}
    executor = (workflow or {}).get("workflow", {}).get("executor")
    for d in table:
        if d.param not in given:
            continue  # a parameter this run does not have (e.g. a plain --params of a few keys)
        value = given[d.param]
        if not d.is_value and not is_unset(value):
            continue  # a rule is recorded only where it replaced an unset parameter
        recorded, why = _recorded(d, files, workflow or {})
        by = f"{d.by}, {executor} executor" if d.source == WORKFLOW_SOURCE and executor else d.by
        entry = {"given": value, "used": None, "by": by, "from": d.where}
        if recorded is not NOT_FOUND and d.convert is not None and not isinstance(recorded, dict):
            recorded = d.convert(recorded)
        if recorded is NOT_FOUND or recorded is None:
            if is_unset(value):
                decided[d.param] = {**entry, "note": why or f"{d.where} is unset"}
            continue
        if recorded == value and not is_unset(value):
            continue
        decided[d.param] = {**entry, "used": recorded}
        if d.is_value and not isinstance(recorded, dict):
            used[d.param] = recorded
    return {**used, "decided": decided}


#: beside params.json: each decided value with the one given (params.json stays reusable with -params-file)
DECIDED_FILE = "params_decided.json"


def write_params(path: str | os.PathLike, resolved: dict[str, Any]) -> Path:
    """Write the values used (``resolved`` without ``decided``) to ``path`` and ``decided`` to
    :data:`DECIDED_FILE` beside it, as pretty JSON (atomically); the second file's path."""
    out = Path(path)
    used = {k: v for k, v in resolved.items() if k != "decided"}
    atomic_write_text(out, json.dumps(used, indent=4, default=str) + "\n")
    decided = out.with_name(DECIDED_FILE)
    atomic_write_text(decided, json.dumps(resolved.get("decided", {}), indent=4, default=str) + "\n")
    return decided


def display_value(param: str, value: Any, decided: dict[str, dict[str, Any]]) -> tuple[Any, str | None]:
    """The value the parameter table shows and its marker: ``(auto)`` when the pipeline decided,
    ``(given: X)`` when the value used differs from the one given, ``(not recorded: why)``."""
    entry = decided.get(param)
    if entry is None:
        return value, None
    if entry.get("used") is None:
        return value, f"not recorded: {entry.get('note') or 'unknown'}"
    used = entry["used"]
    if isinstance(used, dict):  # differs between groups
        used = ", ".join(f"{g}: {v}" for g, v in used.items())
    if is_unset(entry.get("given")):
        return used, f"auto: {entry['by']}"
    return used, f"given: {entry['given']}"
