/*
 * meta: [id: group] (one group), or a batch [id: ..., groups: [[id: group], ...]] whose groups are
 * generated one after the other in one process (--groups_per_task); outputs are per group either way.
 */
process GENERATE {
    tag "${meta.id}"
    label 'process_single'  // ~1 CPU in use: two tasks side by side on 2 CPUs (benchmarks/README.md, cohort)

    input:
    tuple val(meta), path(targets)
    path model_input
    path weights
    path weights_meta   // <weights>.json sidecar, staged beside it; [] when the weights have none
    path bulk      // bulk_counts.tsv and groups.csv of PREPARE_INPUTS, for --bulk_shift
    path groups

    output:
    tuple val(meta), path("*.generated.h5ad")                       , emit: generated
    tuple val(meta), path("*.celltype_*.csv")     , optional: true , emit: shifts  // shifts (+ identifiability with contrast)
    path 'versions.yml'                                , emit: versions
    tuple val(meta), path('task_warnings.txt'), emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    def names = (meta.groups ?: [meta]).collect { group -> "'${group.id}'" }.join(' ')
    """
    generate.py \\
        --input ${model_input} \\
        --weights ${weights} \\
        --targets ${targets} \\
        --group ${names} \\
        --bulk ${bulk} \\
        --groups ${groups} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" torch anndata > versions.yml
    """

    stub:
    def files = (meta.groups ?: [meta]).collect { group -> "'${group.id}.generated.h5ad'" }.join(' ')
    """
    touch ${files}
    b2s_versions.py "${task.process}" torch anndata > versions.yml
    """
}
