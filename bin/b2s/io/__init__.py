"""Reading and validating the pipeline's inputs; output and provenance helpers used by every stage.

Inputs (PREPARE_INPUTS):

* bulk: genes x samples TSV/CSV (optionally ``.gz``) of counts, TPM or FPKM
  (:func:`read_counts`);
* an optional gene ID -> symbol map (:func:`apply_gene_map`, like omicverse's
  ``ov.bulk.Matrix_ID_mapping``);
* the bulk groups: a samplesheet ``group,sample``, a ``--bulk_group a,b,c`` list, or neither
  (:func:`read_groups`);
* the scRNA-seq reference h5ad with raw counts and a cell-type column
  (:func:`b2s.io.reference.read_reference`, which reads only the cells it keeps).

Every problem a user can fix raises :class:`~b2s.errors.InputError` with ONE line naming the
file or parameter, the problem and the fix. Decisions (documented here because they change data):

* Duplicate gene rows (in the bulk, or several IDs mapped to one symbol): the row with the
  largest total count is kept (ties: the first), as omicverse's ``data_drop_duplicates_index``
  does; the original gene order is kept otherwise.
* Gene map: IDs missing from the map (or mapped to an empty symbol) are dropped (they could
  never match reference genes); Ensembl-style version suffixes (``ENSG..1.5``) are ignored
  when the exact ID is not in the map.
* Units (``--bulk_units``, :func:`detect_units`): counts stay integers (fractional salmon/RSEM
  expected counts are rounded, with a log line); TPM/FPKM are kept as given and marked in
  bulk_counts.tsv's header (:data:`UNIT_HEADERS`) for the later stages.
* Tables as upstream tools write them (nf-core/rnaseq merged tables, featureCounts output with
  its comment line and annotation columns, BAM-path sample names) are read without edits; the
  gene column that matches the reference best is used (:func:`choose_gene_column`).
* Group names are kept as given for display; files use their slug (:func:`group_slug`).

Every such decision is one console line and an entry of ``attrs['decisions']``.

The functions a stage script calls are importable from here (``from b2s.io import read_counts``);
the reference (:mod:`b2s.io.reference`) is imported on its own.
"""

from b2s.groupnames import group_id, group_slug
from b2s.io.artifacts import (
    guard_inputs,
    package_versions,
    params_from_args,
    provenance,
    read_prepared,
    set_uns_params,
    write_h5ad,
    write_json,
)
from b2s.io.bulk import (
    ANNOTATION_HEADERS,
    BULK_UNITS,
    UNIT_CHOICES,
    UNIT_HEADERS,
    choose_gene_column,
    decide,
    detect_units,
    drop_duplicate_genes,
    read_counts,
    sample_names_from_paths,
    write_counts,
)
from b2s.io.genes import apply_gene_map, check_shared_genes, read_gene_map
from b2s.io.groups import read_groups, write_groups
from b2s.io.tables import (
    BULK_GROUP_NAME,
    ENSEMBL_ID,
    ENSEMBL_VERSION,
    ID_HEADERS,
    INTEGRAL_TOL,
    MIN_SHARED_GENES,
    NORMALISED_TOL,
    NORMALISED_TOTAL,
    SYMBOL_HEADERS,
    check_exists,
    compression_of,
    examples,
    log,
    open_text,
    read_first_line,
    sniff_sep,
    warn,
)

__all__ = [
    "ANNOTATION_HEADERS",
    "BULK_GROUP_NAME",
    "BULK_UNITS",
    "ENSEMBL_ID",
    "ENSEMBL_VERSION",
    "ID_HEADERS",
    "INTEGRAL_TOL",
    "MIN_SHARED_GENES",
    "NORMALISED_TOL",
    "NORMALISED_TOTAL",
    "SYMBOL_HEADERS",
    "UNIT_CHOICES",
    "UNIT_HEADERS",
    "apply_gene_map",
    "check_exists",
    "check_shared_genes",
    "choose_gene_column",
    "compression_of",
    "decide",
    "detect_units",
    "drop_duplicate_genes",
    "examples",
    "group_id",
    "group_slug",
    "guard_inputs",
    "log",
    "open_text",
    "package_versions",
    "params_from_args",
    "provenance",
    "read_counts",
    "read_first_line",
    "read_gene_map",
    "read_groups",
    "read_prepared",
    "sample_names_from_paths",
    "set_uns_params",
    "sniff_sep",
    "warn",
    "write_counts",
    "write_groups",
    "write_h5ad",
    "write_json",
]
