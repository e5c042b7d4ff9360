process QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(generated), path(filtered)
    path model_input
    path targets

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
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" scanpy pymde matplotlib > versions.yml
    """

    stub:
    """
    touch '${meta.id}.cellprop.png' '${meta.id}.cellprop.csv' '${meta.id}.correlation.png' \\
          '${meta.id}.correlation.csv' '${meta.id}.mde.png'
    echo '{}' > '${meta.id}.metrics.json'
    b2s_versions.py "${task.process}" scanpy pymde matplotlib > versions.yml
    """
}
