process PREPARE_INPUTS {
    // Not the bulk file's name: the failure line names this tag, and most failures are not the bulk's.
    tag "inputs"
    label 'process_single'

    input:
    // Staged under input/ so a user file named like an output is never overwritten.
    path bulk       , stageAs: 'input/*'
    path reference  , stageAs: 'input/*'
    path gene_map   , stageAs: 'input/*'   // [] when --gene_map is not given
    path samplesheet, stageAs: 'input/*'   // [] when --samplesheet is not given

    output:
    path 'bulk_counts.tsv'     , emit: bulk
    path 'groups.csv'          , emit: groups
    path 'reference.h5ad'      , emit: reference
    path 'prepare_summary.json', emit: summary
    path 'versions.yml'        , emit: versions
    path 'task_warnings.txt'   , emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    def map_arg = gene_map ? "--gene_map ${gene_map}" : ''
    def sheet_arg = samplesheet ? "--samplesheet ${samplesheet}" : ''
    """
    prepare_inputs.py \\
        --bulk ${bulk} \\
        --reference ${reference} \\
        ${map_arg} ${sheet_arg} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" anndata pandas numpy > versions.yml
    """

    stub:
    def groups = samplesheet ? "cp ${samplesheet} groups.csv" : "printf 'group,sample\\nstub,stub_1\\n' > groups.csv"
    """
    ${groups}
    touch bulk_counts.tsv reference.h5ad
    echo '{}' > prepare_summary.json
    b2s_versions.py "${task.process}" anndata pandas numpy > versions.yml
    """
}
