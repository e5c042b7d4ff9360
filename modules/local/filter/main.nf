process FILTER {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(generated)

    output:
    tuple val(meta), path("${meta.id}.filtered.h5ad")     , emit: filtered
    tuple val(meta), path("${meta.id}.filter_summary.json"), emit: summary
    path 'versions.yml'                                    , emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    filter_cells.py \\
        --input ${generated} \\
        --group '${meta.id}' \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" scanpy leidenalg umap-learn > versions.yml
    """

    stub:
    """
    touch '${meta.id}.filtered.h5ad'
    echo '{}' > '${meta.id}.filter_summary.json'
    b2s_versions.py "${task.process}" scanpy leidenalg umap-learn > versions.yml
    """
}
