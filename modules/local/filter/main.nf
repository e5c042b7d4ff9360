/*
 * meta: [id: group] (one group), or a batch [id: ..., groups: [[id: group], ...]] whose groups are
 * filtered one after the other in one process (--groups_per_task); outputs are per group either way.
 */
process FILTER {
    tag "${meta.id}"
    label 'process_single'  // ~1 CPU in use: two tasks side by side on 2 CPUs (benchmarks/README.md, cohort)

    input:
    tuple val(meta), path(generated)

    output:
    tuple val(meta), path("*.filtered.h5ad")     , emit: filtered
    tuple val(meta), path("*.filter_summary.json"), emit: summary
    path 'versions.yml'                                    , emit: versions
    tuple val(meta), path('task_warnings.txt'), emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    def names = (meta.groups ?: [meta]).collect { group -> group.id }
    """
    filter_cells.py \\
        --input ${names.collect { group -> "'${group}.generated.h5ad'" }.join(' ')} \\
        --group ${names.collect { group -> "'${group}'" }.join(' ')} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" scanpy leidenalg umap-learn > versions.yml
    """

    stub:
    def names = (meta.groups ?: [meta]).collect { group -> group.id }
    """
    for group in ${names.collect { group -> "'${group}'" }.join(' ')}; do
        touch "\${group}.filtered.h5ad"
        echo '{}' > "\${group}.filter_summary.json"
    done
    b2s_versions.py "${task.process}" scanpy leidenalg umap-learn > versions.yml
    """
}
