"""Quality of the generated cells (the QC stage): per-type markers, kNN typing, the embedding and the
identity summary are importable from here (``from b2s.qc import marker_correlation``); the bulk QC
(:mod:`b2s.qc.bulk`), the within-type structure (:mod:`b2s.qc.structure`) and the composition
contrast (:mod:`b2s.qc.composition`) are imported on their own."""

from b2s.qc.embed import embed, subsample
from b2s.qc.knn import MIN_TYPING_RATIO, KnnTyper, knn_typing, reference_loo_typing, typing_summary
from b2s.qc.markers import marker_correlation, reference_markers
from b2s.qc.metrics import (
    MIN_IDENTITY_RATE,
    MIN_MEDIAN_MARGIN,
    celltype_proportions,
    celltypes_of,
    identity_summary,
    nan_to_none,
    ordered_types,
    qc_log,
    qc_metrics,
    read_cells,
    read_targets,
    vae_identity_of,
)

__all__ = [
    "KnnTyper",
    "MIN_IDENTITY_RATE",
    "MIN_MEDIAN_MARGIN",
    "MIN_TYPING_RATIO",
    "celltype_proportions",
    "celltypes_of",
    "embed",
    "identity_summary",
    "knn_typing",
    "marker_correlation",
    "nan_to_none",
    "ordered_types",
    "qc_log",
    "qc_metrics",
    "read_cells",
    "read_targets",
    "reference_loo_typing",
    "reference_markers",
    "subsample",
    "typing_summary",
    "vae_identity_of",
]
