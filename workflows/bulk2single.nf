/*
 * Bulk2Single, cohort-aware: inputs are prepared and fractions estimated for all groups at once,
 * the beta-VAE is trained ONCE (it depends on the reference only) and shared by every group,
 * then GENERATE -> FILTER -> QC fan out per group ([id: group] meta maps), or per batch of groups
 * with --groups_per_task N > 1 ([id: 'first..last', groups: [[id: group], ...]]: one task runs its
 * groups one after the other in one process; outputs stay per group, identical to N = 1).
 */
include { PREPARE_INPUTS     } from '../modules/local/prepare_inputs'
include { ESTIMATE_FRACTIONS } from '../modules/local/estimate_fractions'
include { PREPROCESS         } from '../modules/local/preprocess'
include { TRAIN_VAE          } from '../modules/local/train_vae'
include { GENERATE           } from '../modules/local/generate'
include { FILTER             } from '../modules/local/filter'
include { QC                 } from '../modules/local/qc'
include { REPORT             } from '../modules/local/report'
include { stagingDir         } from '../subworkflows/local/utils_bulk2single_pipeline'

workflow BULK2SINGLE {
    main:
    ch_versions = Channel.empty()

    def optional = { p -> p ? file(p, checkIfExists: true) : [] }
    PREPARE_INPUTS(
        file(params.bulk, checkIfExists: true),
        file(params.reference, checkIfExists: true),
        optional(params.gene_map),
        optional(params.samplesheet)
    )
    ch_versions = ch_versions.mix(PREPARE_INPUTS.out.versions)

    ESTIMATE_FRACTIONS(PREPARE_INPUTS.out.bulk, PREPARE_INPUTS.out.groups, PREPARE_INPUTS.out.reference,
                       optional(params.markers))
    ch_versions = ch_versions.mix(ESTIMATE_FRACTIONS.out.versions)

    PREPROCESS(PREPARE_INPUTS.out.bulk, PREPARE_INPUTS.out.groups, PREPARE_INPUTS.out.reference)
    ch_versions = ch_versions.mix(PREPROCESS.out.versions)

    // Trained once per run, or reused from a previous run with --vae_weights.
    ch_train_files = Channel.empty()
    ch_train_warnings = Channel.empty()
    if (params.vae_weights) {
        ch_weights = Channel.value(file(params.vae_weights, checkIfExists: true))
        def sidecar = file("${params.vae_weights}.json")
        ch_weights_meta = Channel.value(sidecar.exists() ? sidecar : [])
    } else {
        def checkpoint_dir = params.checkpoint_dir ?: "${workflow.workDir}/b2s_checkpoints"
        TRAIN_VAE(PREPROCESS.out.model_input, checkpoint_dir)
        ch_weights = TRAIN_VAE.out.weights
        ch_weights_meta = TRAIN_VAE.out.weights_meta
        ch_train_files = TRAIN_VAE.out.plot.mix(TRAIN_VAE.out.summary, TRAIN_VAE.out.history)
        ch_train_warnings = TRAIN_VAE.out.warnings
        ch_versions = ch_versions.mix(TRAIN_VAE.out.versions)
    }

    // One [id: group] item per bulk group (or per batch of --groups_per_task groups), each with
    // the shared cell-target table. Batches follow groups.csv order, so -resume finds them again.
    def per_task = groupsPerTask()
    ch_groups = PREPARE_INPUTS.out.groups
        .splitCsv(header: true)
        .map { row -> row.group }
        .unique()
        .map { group -> [id: group] }
        .collate(per_task)
        .map { metas -> metas.size() == 1 ? metas[0] : [id: "${metas[0].id}..${metas[-1].id}".toString(), groups: metas] }

    GENERATE(ch_groups.combine(ESTIMATE_FRACTIONS.out.targets), PREPROCESS.out.model_input, ch_weights, ch_weights_meta,
             PREPARE_INPUTS.out.bulk, PREPARE_INPUTS.out.groups)
    ch_versions = ch_versions.mix(GENERATE.out.versions)

    FILTER(GENERATE.out.generated)
    ch_versions = ch_versions.mix(FILTER.out.versions)

    QC(GENERATE.out.generated.join(FILTER.out.filtered), PREPROCESS.out.model_input, ESTIMATE_FRACTIONS.out.targets,
       PREPARE_INPUTS.out.bulk, PREPARE_INPUTS.out.groups)
    ch_versions = ch_versions.mix(QC.out.versions)

    // One block per process (the per-group tasks write identical blocks), sorted by text: task
    // folders are hashed per run, so sorting the files themselves gave a different order each run.
    // REPORT reads the copy in the work folder, which -resume finds again (a storeDir copy is moved
    // into --outdir at the end, so -resume would rewrite it and re-run REPORT); published apart.
    ch_versions_file = ch_versions
        .map { it.text }
        .unique()
        .collectFile(name: 'software_versions.yml', sort: true)
    ch_versions_file
        .map { f -> f.text }
        .collectFile(name: 'software_versions.yml', storeDir: "${stagingDir()}/pipeline_info")

    // The params as given and the value the workflow decided; REPORT adds those the stages decided
    // and writes pipeline_info/params.json (b2s.report.run_params), published with the report:
    // a run that fails publishes no params.json.
    def given = [params: params, workflow: [groups_per_task: per_task, executor: executorName()]]
    ch_params_file = Channel.of(groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson(given)))
        .collectFile(name: 'params.json')

    // The WARNING: lines of every task (its declared task_warnings.txt), one block per task, each
    // line as 'STAGE<TAB>group<TAB>WARNING: text': for the report's top and the console summary at
    // exit, which map staged names to the user's paths and order the stages (b2s.head.task_messages).
    // The empty item makes the file exist when no task warned.
    ch_warnings = Channel.empty()
        .mix(
            PREPARE_INPUTS.out.warnings.map { f -> ['PREPARE_INPUTS', '', f] },
            ESTIMATE_FRACTIONS.out.warnings.map { f -> ['ESTIMATE_FRACTIONS', '', f] },
            PREPROCESS.out.warnings.map { f -> ['PREPROCESS', '', f] },
            ch_train_warnings.map { f -> ['TRAIN_VAE', '', f] },
            GENERATE.out.warnings.map { meta, f -> ['GENERATE', meta.id, f] },
            FILTER.out.warnings.map { meta, f -> ['FILTER', meta.id, f] },
            QC.out.warnings.map { meta, f -> ['QC', meta.id, f] }
        )
        .map { stage, group, f -> f.readLines().collect { line -> "${stage}\t${group}\t${line}\n" }.join('') }
        .mix(Channel.of(''))
        .collectFile(name: 'task_warnings.tsv', sort: true)

    ch_report_inputs = Channel.empty()
        .mix(
            ESTIMATE_FRACTIONS.out.fractions, ESTIMATE_FRACTIONS.out.sample_fractions,
            ESTIMATE_FRACTIONS.out.targets, ESTIMATE_FRACTIONS.out.plot, ESTIMATE_FRACTIONS.out.summary,
            ESTIMATE_FRACTIONS.out.contrast, ESTIMATE_FRACTIONS.out.contrast_plot,
            PREPARE_INPUTS.out.summary, PREPROCESS.out.summary, ch_train_files,
            FILTER.out.summary.map { meta, f -> f },
            QC.out.files.map { meta, files -> files }.flatten(),
            GENERATE.out.shifts.map { meta, f -> f },
            ch_warnings
        )
        .collect()

    REPORT(ch_report_inputs, ch_params_file, ch_versions_file)

    emit:
    report   = REPORT.out.html
    versions = ch_versions
    warnings = ch_warnings
}

/*
 * Groups per GENERATE/FILTER/QC task: --groups_per_task, or when unset 8 with the local executor
 * (each task pays ~20 s of imports and set-up; benchmarks/README.md, cohort throughput) and 1 with
 * any other executor (HPC/cloud: one task per group, spread over nodes).
 */
def groupsPerTask() {
    if (params.groups_per_task) {
        return params.groups_per_task as int
    }
    return executorName() == 'local' ? 8 : 1
}

/*
 * The run's process executor (local, slurm, awsbatch...). Nextflow has no public API for it in
 * 25.04 (the workflow metadata does not name it), so it is read from the session's config: the
 * pipeline's only use of Nextflow internals (docs/architecture.md, "Head node").
 */
def executorName() {
    def config = nextflow.Global.session?.config
    return (config?.navigate('process.executor') ?: config?.navigate('executor.name') ?: 'local').toString()
}
