process ESTIMATE_FRACTIONS {
    tag "all groups"
    label 'process_low'

    input:
    path bulk
    path groups
    path reference
    path markers, stageAs: 'input/*'   // [] when --markers is not given

    output:
    path 'fractions.csv'         , emit: fractions
    path 'sample_fractions.csv'  , emit: sample_fractions
    path 'cell_targets.csv'      , emit: targets
    path 'fractions_barplot.png' , emit: plot
    path 'fractions_summary.json', emit: summary
    path 'fractions_fit.csv'     , emit: fit
    path 'composition_contrast.csv', emit: contrast                  // change between groups, 95 % intervals
    path 'composition_contrast.png', emit: contrast_plot, optional: true  // >= 2 groups
    path 'versions.yml'          , emit: versions
    path 'task_warnings.txt'     , emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    def markers_arg = markers ? "--markers ${markers}" : ''
    """
    estimate_fractions.py \\
        --bulk ${bulk} \\
        --groups ${groups} \\
        --reference ${reference} \\
        ${markers_arg} ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" torch scikit-learn scipy omicverse > versions.yml
    """

    stub:
    """
    touch fractions.csv sample_fractions.csv cell_targets.csv fractions_barplot.png fractions_fit.csv composition_contrast.csv
    echo '{}' > fractions_summary.json
    b2s_versions.py "${task.process}" torch scikit-learn scipy omicverse > versions.yml
    """
}
