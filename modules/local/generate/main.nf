process GENERATE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(targets)
    path model_input
    path weights
    path weights_meta   // <weights>.json sidecar, staged beside it; [] when the weights have none
    path bulk      // bulk_counts.tsv and groups.csv of PREPARE_INPUTS, for --bulk_shift
    path groups

    output:
    tuple val(meta), path("${meta.id}.generated.h5ad")                       , emit: generated
    tuple val(meta), path("${meta.id}.celltype_shifts.csv"), optional: true , emit: shifts
    path 'versions.yml'                                , emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    generate.py \\
        --input ${model_input} \\
        --weights ${weights} \\
        --targets ${targets} \\
        --group '${meta.id}' \\
        --bulk ${bulk} \\
        --groups ${groups} \\
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
