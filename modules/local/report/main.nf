process REPORT {
    tag "all groups"
    label 'process_single'

    input:
    path inputs, stageAs: 'inputs/*'
    path params_json
    path versions

    output:
    path 'bulk2single_report.html', emit: html
    path 'multiqc/*_mqc.*'        , emit: multiqc
    path 'pipeline_info/params.json', emit: params                 // the values used
    path 'pipeline_info/params_decided.json', emit: decided        // each decided value, with the one given
    path 'versions.yml'           , emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    make_report.py \\
        --inputs inputs \\
        --params ${params_json} \\
        --versions ${versions} \\
        --params_out pipeline_info/params.json \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" matplotlib pandas > versions.yml
    """

    stub:
    """
    echo '<html></html>' > bulk2single_report.html
    mkdir -p multiqc pipeline_info && touch multiqc/bulk2single_warnings_mqc.yaml
    cp ${params_json} pipeline_info/params.json
    echo '{}' > pipeline_info/params_decided.json
    b2s_versions.py "${task.process}" matplotlib pandas > versions.yml
    """
}
