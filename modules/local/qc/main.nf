process QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(generated), path(filtered)
    path model_input
    path targets
    path bulk      // bulk_counts.tsv and groups.csv of PREPARE_INPUTS: QC against the bulk
    path groups

    output:
    tuple val(meta), path("${meta.id}.*")           , emit: files
    tuple val(meta), path("${meta.id}.metrics.json"), emit: metrics
    path 'versions.yml'                             , emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    qc.py \\
        --generated ${generated} \\
        --filtered ${filtered} \\
        --reference ${model_input} \\
        --targets ${targets} \\
        --group '${meta.id}' \\
        --bulk ${bulk} \\
        --groups ${groups} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" scanpy pymde matplotlib > versions.yml
    """

    stub:
    """
    touch '${meta.id}.cellprop.png' '${meta.id}.cellprop.csv' '${meta.id}.correlation.png' \\
          '${meta.id}.correlation.csv' '${meta.id}.mde.png' \\
          '${meta.id}.bulk_qc.csv' '${meta.id}.bulk_residuals.csv' '${meta.id}.bulk_scatter.png'
    echo '{}' > '${meta.id}.metrics.json'
    b2s_versions.py "${task.process}" scanpy pymde matplotlib > versions.yml
    """
}
