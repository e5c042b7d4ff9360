/*
 * Pipeline utilities, plain DSL2 functions (no plugin, so offline runs and Seqera launches
 * behave alike):
 *   printHelp()          every parameter of nextflow_schema.json, grouped, with description and default
 *   validateParameters() params (and samplesheet) checked against the schemas, then input files,
 *                        --outdir, --checkpoint_dir and --device (b2s.preflight), by
 *                        bin/validate_params.py on the head node, before any task starts
 *
 *   include { printHelp; validateParameters } from './subworkflows/local/pipeline_utils'
 */

// Fully qualified class names (no imports) keep this file valid under Nextflow's strict syntax.

include { discardOwnRunRecords } from '../run_guard'

/*
 * The parsed nextflow_schema.json of this pipeline.
 */
def readSchema() {
    def schemaFile = new File("${workflow.projectDir}/nextflow_schema.json")
    return new groovy.json.JsonSlurper().parseText(schemaFile.text)
}

/*
 * A value as typed on the command line (null -> none).
 */
def helpValue(value) {
    if (value == null) {
        return 'none'
    }
    return value.toString()
}

/*
 * Print every parameter grouped as in the schema ($defs in allOf order), with type,
 * description, choices and default. Same layout as help_text() in bin/b2s/params.py.
 */
def printHelp() {
    def schema = readSchema()
    def defs = schema['$defs'] ?: [:]
    def order = (schema.allOf ?: []).collect { ref -> ref['$ref'].tokenize('/')[-1] }
    order.addAll(defs.keySet().findAll { key -> !order.contains(key) })
    def lines = []
    lines << "${schema.title}".toString()
    lines << ''
    lines << 'Usage:'
    lines << "  nextflow run ${workflow.manifest.name ?: 'nf-bulk2single/nf-bulk2single'} -profile docker,gpu --bulk counts.tsv.gz --reference ref.h5ad --outdir results".toString()
    lines << ''
    order.each { key ->
        def group = defs[key]
        if (group == null) {
            return
        }
        def required = group.required ?: []
        lines << "${group.title ?: key}:".toString()
        if (group.description) {
            lines << "  ${group.description}".toString()
        }
        (group.properties ?: [:]).each { name, prop ->
            def extra = []
            if (prop.enum) {
                extra << 'one of ' + prop.enum.collect { v -> helpValue(v) }.join(', ')
            }
            if (required.contains(name)) {
                extra << 'required'
            } else {
                extra << 'default: ' + helpValue(prop.default)
            }
            def type = prop.type ?: 'string'
            lines << "  --${name.padRight(18)} [${type}] ${prop.description ?: ''} [${extra.join('; ')}]".toString()
        }
        lines << ''
    }
    // println, not log.info: help must print with -q too
    println(lines.join('\n').replaceAll(/\s+$/, ''))
}

/*
 * params as JSON-safe values (GStrings and paths become strings).
 */
def plainValue(value) {
    if (value == null || value instanceof Number || value instanceof Boolean || value instanceof String) {
        return value
    }
    if (value instanceof Map) {
        return value.collectEntries { k, v -> [(k.toString()): plainValue(v)] }
    }
    if (value instanceof Collection) {
        return value.collect { v -> plainValue(v) }
    }
    return value.toString()
}

/*
 * Validate params and the samplesheet against the schemas with bin/validate_params.py
 * (Python jsonschema). Bad values stop the run here with one line each; unknown parameters
 * are warnings. Without python3 or jsonschema on the head node validation is skipped with a
 * warning (every stage script still checks its own inputs when its task runs).
 */
def validateParameters() {
    if (params.help) {
        return
    }
    if (!params.validate_params) {
        log.warn('--validate_params false: parameters are not checked against nextflow_schema.json')
        return
    }
    def projectDir = workflow.projectDir.toString()
    def paramsFile = java.io.File.createTempFile('b2s_params_', '.json')
    paramsFile.deleteOnExit()
    paramsFile.text = groovy.json.JsonOutput.toJson(plainValue(params))
    // The executor decides whether this machine's GPU is the tasks' GPU (--device cuda).
    def config = nextflow.Global.session?.config
    def executor = config?.navigate('process.executor') ?: config?.navigate('executor.name') ?: 'local'
    def cmd = ['python3', "${projectDir}/bin/validate_params.py",
               '--schema', "${projectDir}/nextflow_schema.json",
               '--params-json', paramsFile.toString(),
               '--executor', executor].collect { arg -> arg.toString() }
    def proc = null
    try {
        // Relative input paths are resolved from the launch folder, as Nextflow does.
        proc = cmd.execute(null, new File(workflow.launchDir.toString()))
    } catch (java.io.IOException e) {
        log.warn("python3 is not available on this machine, so parameters are not validated against nextflow_schema.json here; each task's script still checks its inputs (${e.message})")
        paramsFile.delete()
        return
    }
    def out = new StringBuilder()
    def err = new StringBuilder()
    proc.waitForProcessOutput(out, err)
    paramsFile.delete()
    def rc = proc.exitValue()
    def lines = (out.toString() + err.toString()).readLines().findAll { line -> line.trim() }
    lines.findAll { line -> line.startsWith('WARN: ') }.each { line -> log.warn(line.substring(6)) }
    // Kept as 'ERROR: --param value: problem (see ...)', one line each: error() prints them as they are.
    def errors = lines.findAll { line -> line.startsWith('ERROR: ') }
    if (rc == 0) {
        return
    }
    if (rc == 2 && errors) {
        discardOwnRunRecords()
        error(errors.join('\n'))
    }
    if (rc == 3) {
        log.warn('python3 on this machine has no jsonschema module, so parameters are not validated against nextflow_schema.json here; each task\'s script still checks its inputs')
        return
    }
    def detail = lines ? lines[-1] : "exit status ${rc}"
    log.warn("parameter validation could not run (${detail}); continuing, each task's script still checks its inputs")
}
