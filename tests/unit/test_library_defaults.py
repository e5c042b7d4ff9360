"""The pipeline's defaults live in nextflow.config / nextflow_schema.json (test_params checks that the
two agree). The stage scripts have no second default (test_stage_args); the b2s functions and
settings that benchmarks and tests call directly keep keyword defaults for the same parameters,
and those must be the pipeline's, so a default changed in one place fails here instead of
drifting."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from b2s.cluster.filter import filter_cells
from b2s.fractions.estimate import cell_targets, estimate_sample_fractions
from b2s.generate.rates import rate_model
from b2s.head.schema import load_schema, schema_defaults
from b2s.model.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = schema_defaults(load_schema(REPO / "nextflow_schema.json"))


def _keyword_defaults(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: f.default for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING}
    return {p.name: p.default for p in inspect.signature(obj).parameters.values() if p.default is not p.empty}


# Names that mean something else here: generate's batch_size is cells per forward pass; rate_model
# runs where its caller says (--device is resolved before); TrainConfig's unset-able settings
# (batch_size, learning_rate, epoch_num, vae_genes) take the engine's defaults (ENGINE_DEFAULTS).
OTHER_MEANING = {rate_model: {"batch_size", "device"}}


@pytest.mark.parametrize("obj", [TrainConfig, filter_cells, cell_targets, estimate_sample_fractions, rate_model],
                         ids=lambda o: o.__name__)
def test_library_defaults_are_the_pipeline_defaults(obj):
    shared = {k: v for k, v in _keyword_defaults(obj).items()
              if DEFAULTS.get(k) is not None and k not in OTHER_MEANING.get(obj, set())}
    assert shared, f"{obj.__name__} shares no parameter with the pipeline: drop it from this test"
    assert {k: DEFAULTS[k] for k in shared} == shared
