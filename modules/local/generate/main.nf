process GENERATE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(targets)
    path model_input
    path weights
    path weights_meta   // <weights>.json sidecar, staged beside it; [] when the weights have none

    output:
    tuple val(meta), path("${meta.id}.generated.h5ad"), emit: generated
    path 'versions.yml'                                , emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    generate.py \\
        --input ${model_input} \\
        --weights ${weights} \\
        --targets ${targets} \\
        --group '${meta.id}' \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" torch anndata > versions.yml
    """

    stub:
    """
    touch '${meta.id}.generated.h5ad'
    b2s_versions.py "${task.process}" torch anndata > versions.yml
    """
}
