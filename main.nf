#!/usr/bin/env nextflow
/*
 * nf-bulk2single: bulk RNA-seq cohorts -> synthetic single cells with a matched scRNA-seq
 * reference (omicverse Bulk2Single workflow). See README.md and docs/usage.md.
 */
nextflow.enable.dsl = 2

include { BULK2SINGLE; executorName                       } from './workflows/bulk2single'
include { PIPELINE_INITIALISATION; PIPELINE_COMPLETION     } from './subworkflows/local/utils_bulk2single_pipeline'

workflow {
    // --help; checks before any task; the --outdir lock (tasks publish into a staging folder)
    PIPELINE_INITIALISATION(executorName())
    BULK2SINGLE()
    // at exit: the staging folder moved into --outdir only on success; warnings; the lock released
    PIPELINE_COMPLETION(BULK2SINGLE.out.warnings)
}
