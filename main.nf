#!/usr/bin/env nextflow
/*
 * nf-bulk2single: bulk RNA-seq cohorts -> synthetic single cells with a matched scRNA-seq
 * reference (omicverse Bulk2Single workflow). See README.md and docs/usage.md.
 */
nextflow.enable.dsl = 2

include { BULK2SINGLE                     } from './workflows/bulk2single'
include { printHelp; validateParameters   } from './subworkflows/local/pipeline_utils'
include { acquireOutdirLock; publishOnSuccess; reportAtExit } from './subworkflows/local/run_guard'

workflow {
    if (params.help) {
        printHelp()
        exit 0
    }
    validateParameters()
    acquireOutdirLock()
    publishOnSuccess()   // tasks publish into a staging folder, moved into --outdir only on success
    BULK2SINGLE()
    reportAtExit(BULK2SINGLE.out.warnings)
}
