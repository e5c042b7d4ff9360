/*
 * Initialisation and completion of nf-bulk2single. Every decision is made by bin/run_guard.py on
 * the head node (b2s.head.outdir_lock, b2s.head.staging, b2s.head.task_messages; tested in tests/unit); this file
 * gives it the run's facts and shows what it says.
 *   PIPELINE_INITIALISATION(executor)  --help, then parameter and input checks and the outdir lock
 *   PIPELINE_COMPLETION(warnings)      at exit: staging published or discarded, the task warnings
 *                                      and a failed task's ERROR line, the lock released
 *   stagingDir()                       where tasks publish during the run (--staging_folder, as in conf/modules.config)
 */

// Fully qualified class names (no imports) keep this file valid under Nextflow's strict syntax.

def stagingDir() {
    def name = params.staging_folder.toString()
    if (name in ['', '.', '..'] || name.contains('/') || name.contains('\\')) {
        error("--staging_folder '${name}': must be one folder name inside --outdir (no '/'), not '.' or '..'; leave it unset")
    }
    return "${params.outdir}/${name}".toString()
}

def isObjectStore() {
    return params.outdir.toString() ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/
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
 * Run `python3 bin/<script> <args>` from the launch folder, `facts` (params, workflow metadata and
 * `extra`) given as a JSON file after `--facts`. Returns [rc, out, err] (lines), or null when
 * python3 cannot be started here.
 */
def headNode(String script, List args, Map extra = null) {
    def wf = workflow
    def cmd = ['python3', "${wf.projectDir}/bin/${script}".toString()] + args
    def facts = null
    if (extra != null) {
        facts = java.io.File.createTempFile('b2s_run_', '.json')
        def run = [run_name: wf.runName, session_id: wf.sessionId.toString(), pid: ProcessHandle.current().pid(),
                   launch_dir: wf.launchDir.toString(), work_dir: wf.workDir.toString(), project_dir: wf.projectDir.toString(),
                   command_line: wf.commandLine, start_ms: wf.start.toInstant().toEpochMilli()]
        facts.text = groovy.json.JsonOutput.toJson(plainValue([params: params, workflow: run + (extra.workflow ?: [:]), end: extra.end]))
        cmd += ['--facts', facts.toString()]
    }
    try {
        def proc = cmd.execute(null, new File(wf.launchDir.toString()))
        def out = new StringBuilder()
        def err = new StringBuilder()
        proc.waitForProcessOutput(out, err)
        return [proc.exitValue(), out.toString().readLines(), err.toString().readLines().findAll { line -> line.trim() }]
    } catch (java.io.IOException e) {
        log.debug("python3 cannot be started here: ${e.message}")
        return null
    } finally {
        facts?.delete()
    }
}

/*
 * The 'INFO: ' and 'WARN: ' lines of bin/run_guard.py to Nextflow's log; its 'ERROR: ' lines returned.
 */
def relay(List lines) {
    lines.findAll { line -> line.startsWith('INFO: ') }.each { line -> log.info(line.substring(6)) }
    lines.findAll { line -> line.startsWith('WARN: ') }.each { line -> log.warn(line.substring(6)) }
    return lines.findAll { line -> line.startsWith('ERROR: ') }
}

/*
 * The staging folder through Nextflow's file API, where bin/run_guard.py cannot reach it (an
 * object-store --outdir) or cannot run (no python3 here): moved into --outdir file by file when
 * `publish`, then deleted.
 */
def stagingByNextflow(boolean publish) {
    def staging = file(stagingDir())
    if (!staging.exists()) {
        return
    }
    if (publish) {
        def root = file(params.outdir.toString())
        staging.eachFileRecurse(groovy.io.FileType.FILES) { f -> f.moveTo(root.resolve(staging.relativize(f).toString())) }
    }
    staging.deleteDir()
}

workflow PIPELINE_INITIALISATION {
    take:
    executor   // the run's process executor: the device check depends on it

    main:
    if (params.help) {
        def help = headNode('validate_params.py', ['--schema', "${workflow.projectDir}/nextflow_schema.json".toString(), '--print-help'])
        // println, not log.info: help must print with -q too
        println(help ? help[1].join('\n') : 'python3 is needed for --help here; every parameter is described in nextflow_schema.json and docs/usage.md')
        exit 0
    }
    def res = headNode('run_guard.py', ['start'], [workflow: [executor: executor]])
    if (res == null) {
        log.warn('python3 is not available on this machine: parameters are not validated and no --outdir lock is taken; each task\'s script still checks its inputs')
    } else {
        def errors = relay(res[2])
        if (res[0] == 2 && errors) {
            error(errors.join('\n'))
        } else if (res[0] != 0) {
            log.warn("the run guards could not run (${res[2] ? res[2][-1] : "exit status ${res[0]}"}); continuing without them")
        }
    }
    if ((res == null || isObjectStore()) && file(stagingDir()).exists()) {
        log.warn("--outdir ${params.outdir}: deleting ${params.staging_folder} left by a run that was killed (its results were never published)")
        stagingByNextflow(false)
    }
}

workflow PIPELINE_COMPLETION {
    take:
    warnings   // task_warnings.tsv: the WARNING: lines of every task (only when every task succeeded)

    main:
    def wf = workflow
    def run = [warnings: null, lines: []]
    warnings.subscribe { f -> run.warnings = f.toString() }
    wf.onComplete {
        def res = headNode('run_guard.py', ['finish'], [end: [success: wf.success, exit_status: wf.exitStatus,
                                                                 error_message: wf.errorMessage, warnings: run.warnings]])
        if (res == null || isObjectStore()) {
            stagingByNextflow(wf.success)
        }
        if (res != null) {
            relay(res[2]).each { line -> log.error(line) }
            run.lines = res[1]
        }
    }
    // The summary and a failed task's ERROR line are the last console lines: with ANSI logging
    // Nextflow prints its own error report after the onComplete handlers, so they are printed as
    // the JVM exits (docs/architecture.md, "Head node").
    Runtime.runtime.addShutdownHook(new Thread({ -> if (run.lines) { println(run.lines.join('\n')) } } as Runnable))
}
