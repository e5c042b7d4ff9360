"""The names the stages share, each defined once: obs keys, layers, table columns, file names.

Plain module-level constants, no logic and no imports (the head node imports it with the standard
library only). ``tests/unit/test_package_layout.py`` fails when another b2s module assigns a copy
of one of these values to a module-level name.
"""

# --- AnnData ----------------------------------------------------------------------------------
#: obs column of the cell type in every h5ad the pipeline writes (and a column of its tables).
CELLTYPE = "celltype"
#: Layer holding the raw counts (model input, generated cells).
COUNTS_LAYER = "counts"
#: ``uns`` key of the JSON string with the params and provenance of an h5ad output.
UNS_KEY = "b2s"
#: ``uns`` key of GENERATE's bulk-shift record (a JSON string: mode, decision, shifts), read by QC.
BULK_SHIFT_KEY = "bulk_shift"

# --- table columns ----------------------------------------------------------------------------
#: Group column of groups.csv and cell_targets.csv (index name of fractions.csv).
GROUP = "group"
#: Sample column of groups.csv (index name of sample_fractions.csv and fractions_fit.csv).
SAMPLE = "sample"
#: First column of bulk_counts.tsv, bulk_profiles.csv and the gene tables (shifts, markers, residuals).
GENE = "gene"
#: Estimated fraction column of cell_targets.csv (and composition_contrast.csv).
FRACTION = "fraction"
#: Target cell-number column of cell_targets.csv.
N_CELLS = "n_cells"

# --- run-level files (PREPARE_INPUTS .. TRAIN_VAE) --------------------------------------------
#: Bulk counts, genes x samples (PREPARE_INPUTS).
BULK_COUNTS_FILE = "bulk_counts.tsv"
#: ``group,sample`` table (PREPARE_INPUTS).
GROUPS_FILE = "groups.csv"
#: Reference cells, raw counts and ``obs[CELLTYPE]`` (PREPARE_INPUTS).
REFERENCE_FILE = "reference.h5ad"
#: PREPARE_INPUTS' summary JSON.
PREPARE_SUMMARY_FILE = "prepare_summary.json"
#: Fractions per group (ESTIMATE_FRACTIONS).
FRACTIONS_FILE = "fractions.csv"
#: Fractions per sample (ESTIMATE_FRACTIONS).
SAMPLE_FRACTIONS_FILE = "sample_fractions.csv"
#: ``group,celltype,fraction,n_cells`` (ESTIMATE_FRACTIONS).
CELL_TARGETS_FILE = "cell_targets.csv"
#: Goodness of fit per sample (ESTIMATE_FRACTIONS).
FRACTIONS_FIT_FILE = "fractions_fit.csv"
#: Stacked bars of the fractions (ESTIMATE_FRACTIONS).
FRACTIONS_BARPLOT_FILE = "fractions_barplot.png"
#: ESTIMATE_FRACTIONS' summary JSON.
FRACTIONS_SUMMARY_FILE = "fractions_summary.json"
#: Composition change between groups, table (ESTIMATE_FRACTIONS).
COMPOSITION_CONTRAST_FILE = "composition_contrast.csv"
#: Composition change between groups, figure (ESTIMATE_FRACTIONS, with >= 2 groups).
COMPOSITION_CONTRAST_PLOT = "composition_contrast.png"
#: Reference cells x shared genes, log-normalised, the VAE's input (PREPROCESS).
MODEL_INPUT_FILE = "model_input.h5ad"
#: Log10 DESeq2 group means of the bulk, genes x groups (PREPROCESS).
BULK_PROFILES_FILE = "bulk_profiles.csv"
#: PREPROCESS' summary JSON.
PREPROCESS_SUMMARY_FILE = "preprocess_summary.json"
#: The VAE's state dict (TRAIN_VAE; its sidecar is ``vae.pth.json``, b2s.model.weights).
VAE_WEIGHTS_FILE = "vae.pth"
#: ``epoch,loss,recon,kl`` per epoch (TRAIN_VAE).
LOSS_HISTORY_FILE = "loss_history.csv"
#: Loss curve of the VAE (TRAIN_VAE).
LOSS_PLOT_FILE = "loss_plot.png"
#: TRAIN_VAE's summary JSON.
TRAIN_SUMMARY_FILE = "train_summary.json"
#: Each task's ``WARNING:`` lines (``$B2S_WARNINGS_FILE``, a declared output of every process).
TASK_WARNINGS_FILE = "task_warnings.txt"
#: Every task's warnings, collected by the workflow (``STAGE<TAB>group<TAB>WARNING: text``).
TASK_WARNINGS_TABLE = "task_warnings.tsv"
#: The self-contained HTML report (REPORT).
REPORT_FILE = "bulk2single_report.html"

# --- per-group files: ``<group><suffix>`` (GENERATE, FILTER, QC) ------------------------------
#: Generated cells (GENERATE).
GENERATED_SUFFIX = ".generated.h5ad"
#: Per-type log2 fold changes of bulk-informed generation (GENERATE).
CELLTYPE_SHIFTS_SUFFIX = ".celltype_shifts.csv"
#: Identifiability of the per-type shifts (GENERATE, ``--bulk_shift contrast``).
IDENTIFIABILITY_SUFFIX = ".celltype_identifiability.csv"
#: Cells kept by the leiden filter (FILTER).
FILTERED_SUFFIX = ".filtered.h5ad"
#: FILTER's summary JSON.
FILTER_SUMMARY_SUFFIX = ".filter_summary.json"
#: QC's metrics JSON.
METRICS_SUFFIX = ".metrics.json"
#: Cell-type proportions, generated vs targets (QC).
CELLPROP_SUFFIX = ".cellprop.csv"
#: Cell-type proportions figure (QC).
CELLPROP_PLOT_SUFFIX = ".cellprop.png"
#: Marker correlation per reference type (QC).
CORRELATION_SUFFIX = ".correlation.csv"
#: Marker correlation heatmap (QC).
CORRELATION_PLOT_SUFFIX = ".correlation.png"
#: Marker correlation, reference x generated types (QC).
CORRELATION_MATRIX_SUFFIX = ".correlation_matrix.csv"
#: MDE embedding figure (QC).
MDE_PLOT_SUFFIX = ".mde.png"
#: Pseudo-bulk vs bulk scores (QC with ``--bulk``).
BULK_QC_SUFFIX = ".bulk_qc.csv"
#: Pseudo-bulk vs bulk, the genes furthest off (QC with ``--bulk``).
BULK_RESIDUALS_SUFFIX = ".bulk_residuals.csv"
#: Pseudo-bulk vs bulk scatter (QC with ``--bulk``).
BULK_SCATTER_SUFFIX = ".bulk_scatter.png"
