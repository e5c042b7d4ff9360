process TRAIN_VAE {
    tag "beta-VAE"
    // One GPU with -profile gpu; the script falls back to CPU when CUDA is absent.
    label 'process_gpu'

    input:
    path model_input
    val checkpoint_dir   // outside the task folder, so a killed/retried task resumes

    output:
    path 'vae.pth'           , emit: weights
    path 'loss_history.csv'  , emit: history
    path 'loss_plot.png'     , emit: plot
    path 'train_summary.json', emit: summary
    path 'versions.yml'      , emit: versions
    path 'vae.pth.json'      , emit: weights_meta  // genes in order + settings (b2s.model.weights)
    path 'task_warnings.txt' , emit: warnings, optional: true  // its WARNING: lines (b2s.errors.warn)

    script:
    def args = task.ext.args ?: ''
    """
    train_vae.py \\
        --input ${model_input} \\
        --checkpoint_dir ${checkpoint_dir} \\
        ${args} \\
        --outdir .
    b2s_versions.py "${task.process}" torch > versions.yml
    """

    stub:
    """
    touch vae.pth vae.pth.json loss_history.csv loss_plot.png
    echo '{}' > train_summary.json
    b2s_versions.py "${task.process}" torch > versions.yml
    """
}
