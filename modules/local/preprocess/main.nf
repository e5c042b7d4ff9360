process PREPROCESS {
    tag "shared genes"
    label 'process_low'

    input:
    path bulk
    path groups
    path reference

    output:
    path 'model_input.h5ad'       , emit: model_input
    path 'bulk_profiles.csv'      , emit: bulk_profiles
    path 'preprocess_summary.json', emit: summary
    path 'versions.yml'           , emit: versions
    path 'task_warnings.txt'      , emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    """
    preprocess.py \\
        --bulk ${bulk} \\
        --groups ${groups} \\
        --reference ${reference} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" scanpy anndata > versions.yml
    """

    stub:
    """
    touch model_input.h5ad bulk_profiles.csv
    echo '{}' > preprocess_summary.json
    b2s_versions.py "${task.process}" scanpy anndata > versions.yml
    """
}
