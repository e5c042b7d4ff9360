import groovy.json.JsonSlurper

/**
 * Reads an .h5ad for nf-test assertions. nf-test cannot open HDF5, so this runs
 * tests/lib/h5ad_summary.py (relative to the project root, where nf-test runs) with the python on
 * PATH, i.e. the pipeline's environment (set NFT_PYTHON to use another), and returns its JSON
 * summary as a Map.
 */
class H5ad {

    static Map summary(Object file) {
        def script = new File(System.getProperty('user.dir'), 'tests/lib/h5ad_summary.py')
        def python = System.getenv('NFT_PYTHON') ?: 'python3'
        def proc = [python, script.absolutePath, file.toString()].execute()
        def out = new StringBuilder()
        def err = new StringBuilder()
        proc.waitForProcessOutput(out, err)
        if (proc.exitValue() != 0) {
            def tail = err.toString().readLines().takeRight(3).join(' | ')
            throw new RuntimeException("h5ad_summary.py ${file} failed with ${python}: ${tail}")
        }
        return new JsonSlurper().parseText(out.toString()) as Map
    }
}
