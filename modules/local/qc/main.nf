/*
 * meta: [id: group] (one group), or a batch [id: ..., groups: [[id: group], ...]] whose groups are
 * assessed one after the other in one process (--groups_per_task); outputs are per group either way
 * (<group>.<name>.<ext>).
 */
process QC {
    tag "${meta.id}"
    label 'process_single'  // ~1 CPU in use: two tasks side by side on 2 CPUs (benchmarks/README.md, cohort)

    input:
    tuple val(meta), path(generated), path(filtered)
    path model_input
    path targets
    path bulk      // bulk_counts.tsv and groups.csv of PREPARE_INPUTS: QC against the bulk
    path groups

    output:
    tuple val(meta), path("*.{png,csv,json}")  , emit: files
    tuple val(meta), path("*.metrics.json")    , emit: metrics
    path 'versions.yml'                             , emit: versions
    tuple val(meta), path('task_warnings.txt'), emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    def names = (meta.groups ?: [meta]).collect { group -> group.id }
    """
    qc.py \\
        --generated ${names.collect { group -> "'${group}.generated.h5ad'" }.join(' ')} \\
        --filtered ${names.collect { group -> "'${group}.filtered.h5ad'" }.join(' ')} \\
        --reference ${model_input} \\
        --targets ${targets} \\
        --group ${names.collect { group -> "'${group}'" }.join(' ')} \\
        --bulk ${bulk} \\
        --groups ${groups} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" scanpy pymde matplotlib > versions.yml
    """

    stub:
    def names = (meta.groups ?: [meta]).collect { group -> group.id }
    """
    for group in ${names.collect { group -> "'${group}'" }.join(' ')}; do
        for name in cellprop.png cellprop.csv correlation.png correlation.csv mde.png \\
                    bulk_qc.csv bulk_residuals.csv bulk_scatter.png; do
            touch "\${group}.\${name}"
        done
        echo '{}' > "\${group}.metrics.json"
    done
    b2s_versions.py "${task.process}" scanpy pymde matplotlib > versions.yml
    """
}
