/*
 * Run guards, plain DSL2 functions run on the head node:
 *   acquireOutdirLock()         one live run per --outdir: a lock file in the outdir, refused with one
 *                               line when another live run holds it, released at exit
 *   discardOwnRunRecords()      a run stopped on the head node (parameters, lock) leaves no file behind
 *   taskWarnings(stage, group, dir)
 *                               the WARNING: lines of one finished task, as 'STAGE<TAB>group<TAB>text' lines
 *                               (a line tagged '[group=G] ' by a task of several groups is filed under G)
 *   reportAtExit(ch_warnings)   at exit: the console summary of task warnings, and for a failed task
 *                               its own ERROR: line (user paths, not staged ones) as the LAST line
 *   stagingDir()                where tasks publish during a run: <outdir>/.nf-bulk2single.staging
 *                               (conf/modules.config, the workflow's collectFile storeDir)
 *   publishOnSuccess()          at exit: the staging folder moved into --outdir when the run
 *                               succeeded, deleted when it failed (a failed run publishes nothing)
 *
 *   include { acquireOutdirLock; publishOnSuccess; reportAtExit } from './subworkflows/local/run_guard'
 */

// Fully qualified class names (no imports) keep this file valid under Nextflow's strict syntax.

/*
 * Name of the lock file inside --outdir.
 */
def lockName() {
    return '.nf-bulk2single.lock'
}

/*
 * A lock not touched for this long is stale (the holder refreshes it every minute).
 */
def lockStaleMillis() {
    return 10 * 60 * 1000L
}

def isRemotePath(path) {
    return path.toString() ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/
}

def hostName() {
    try {
        return java.net.InetAddress.localHost.hostName
    } catch (Exception e) {
        return System.getenv('HOSTNAME') ?: 'unknown'
    }
}

/*
 * --outdir as a local File (relative paths start at the launch folder, as Nextflow resolves them).
 */
def localOutdir() {
    def dir = new File(params.outdir.toString())
    return dir.absolute ? dir : new File(workflow.launchDir.toString(), params.outdir.toString())
}

def readLock(File file) {
    try {
        def data = new groovy.json.JsonSlurper().parseText(file.text)
        return data instanceof Map ? data : null
    } catch (Exception e) {
        return null
    }
}

/*
 * Why the lock held by `other` may be taken over (null: its run is alive).
 * Same session: this is its -resume. Same host: the holder's process must be alive and have
 * started before the lock (a reused pid is not the holder). Any host: no heartbeat for 10 min.
 */
def staleReason(Map other, File file, Map me) {
    def age = System.currentTimeMillis() - file.lastModified()
    if (other == null) {
        return age > lockStaleMillis() ? "unreadable lock untouched for ${((age / 60000) as long)} min" : null
    }
    if (other.session_id && other.session_id == me.session_id) {
        return 'same session (-resume)'
    }
    if (other.host == me.host && other.pid) {
        def handle = ProcessHandle.of(other.pid as long)
        if (!handle.isPresent() || !handle.get().isAlive()) {
            return "its process ${other.pid} on ${other.host} is not running"
        }
        def start = handle.get().info().startInstant()
        if (start.isPresent() && other.started && start.get().toEpochMilli() > (other.started as long) + 5000) {
            return "its process id ${other.pid} now belongs to another program"
        }
        return null
    }
    if (age > lockStaleMillis()) {
        return "no heartbeat from ${other.host} for ${((age / 60000) as long)} min"
    }
    return null
}

/*
 * Create `lock` holding `text` in one step, failing when it exists (O_EXCL): the text is written
 * to a temporary file that is then hard-linked to the lock's name, so no run ever reads a lock
 * half-written. File systems without hard links: create-new, then write.
 */
def createLockFile(File lock, String text) {
    def tmp = new File(lock.parentFile, "${lock.name}.${ProcessHandle.current().pid()}.${System.nanoTime()}.tmp")
    tmp.text = text
    try {
        java.nio.file.Files.createLink(lock.toPath(), tmp.toPath())
        return true
    } catch (java.nio.file.FileAlreadyExistsException e) {
        return false
    } catch (Exception e) {
        log.debug("no hard link for the lock (${e.message}): created in two steps")
    } finally {
        tmp.delete()
    }
    try {
        java.nio.file.Files.createFile(lock.toPath())
    } catch (java.nio.file.FileAlreadyExistsException e) {
        return false
    }
    lock.text = text
    return true
}

def readText(File file) {
    try {
        return file.text
    } catch (Exception e) {
        return null
    }
}

/*
 * Delete `lock` only if it still holds `seen` (the text judged stale), under a takeover mutex
 * (<lock>.takeover, created O_EXCL) so that of two runs finding one stale lock at the same
 * moment only one deletes it: the other then finds the winner's new lock (or none), never
 * deletes it. A mutex older than a minute belongs to a run that died mid-takeover.
 */
def deleteIfUnchanged(File lock, String seen) {
    def mutex = new File(lock.parentFile, "${lock.name}.takeover")
    try {
        java.nio.file.Files.createFile(mutex.toPath())
    } catch (java.nio.file.FileAlreadyExistsException e) {
        if (System.currentTimeMillis() - mutex.lastModified() > 60000) {
            mutex.delete()
        }
        return false
    }
    try {
        if (readText(lock) == seen) {
            return lock.delete()
        }
        return false
    } finally {
        mutex.delete()
    }
}

/*
 * Take `lock` for `text`: [taken: true], or [taken: false, holder: <its lock as a Map>] when
 * staleWhy(holder, lock) says its run is alive (returns null), or [taken: false, holder: null]
 * after 20 lost races. A stale lock is deleted (onTakeover(holder, why) is told) and the creation
 * retried; two runs racing for one stale lock end with one holder and one refusal.
 */
def takeLock(File lock, String text, Closure staleWhy, Closure onTakeover) {
    def attempt = 0
    while (attempt < 20) {
        attempt += 1
        if (createLockFile(lock, text)) {
            return [taken: true, holder: null]
        }
        def seen = readText(lock)
        if (seen != null) {
            def other = null
            try {
                def data = new groovy.json.JsonSlurper().parseText(seen)
                other = data instanceof Map ? data : null
            } catch (Exception e) {
                other = null
            }
            def why = staleWhy(other, lock)
            if (why == null) {
                return [taken: false, holder: other ?: [:]]
            }
            if (deleteIfUnchanged(lock, seen)) {
                onTakeover(other, why)
            } else {
                sleep(20 + new java.util.Random().nextInt(80))
            }
        }
    }
    return [taken: false, holder: null]
}

/*
 * Take the outdir lock, or stop with one line when another live run holds it. Object-store
 * outdirs (s3://, gs://, az://) have no atomic file creation, so no lock is taken there (a note
 * says so). The lock is refreshed every minute and removed at exit, success or failure.
 */
def acquireOutdirLock() {
    def wf = workflow
    def outdir = params.outdir?.toString()
    if (!outdir) {
        return
    }
    if (isRemotePath(outdir)) {
        log.info("--outdir ${outdir} is an object store: no run lock is taken there, so make sure no other run writes to it")
        return
    }
    def dir = localOutdir()
    dir.mkdirs()
    def lock = new File(dir, lockName())
    def me = [
        pipeline  : 'nf-bulk2single',
        run_name  : wf.runName,
        session_id: wf.sessionId.toString(),
        pid       : ProcessHandle.current().pid(),
        host      : hostName(),
        user      : System.getProperty('user.name'),
        launch_dir: wf.launchDir.toString(),
        started   : System.currentTimeMillis(),
        command   : wf.commandLine,
    ]
    def text = groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson(me)) + '\n'
    def res = takeLock(lock, text, { other, file -> staleReason(other, file, me) }) { other, why ->
        log.warn("--outdir ${outdir}: taking over the lock of run '${other?.run_name ?: '?'}' (${why})")
    }
    if (!res.taken && res.holder != null) {
        def other = res.holder
        discardOwnRunRecords()
        def since = other.started ? new java.util.Date(other.started as long).format('yyyy-MM-dd HH:mm') : '?'
        error("ERROR: --outdir ${outdir} is in use by run '${other.run_name ?: '?'}' (pid ${other.pid ?: '?'} on ${other.host ?: '?'}, since ${since}, session ${other.session_id ?: '?'}); two runs must not publish into one folder: wait for it to end or pass another --outdir (if that run is gone, delete ${lock})")
    }
    if (!res.taken) {
        discardOwnRunRecords()
        error("ERROR: --outdir ${outdir}: the run lock ${lock} could not be taken (other runs kept taking it at the same moment); start again")
    }
    def mine = { ->
        def now = readLock(lock)
        return now != null && now.session_id == me.session_id && (now.pid as long) == me.pid
    }
    Thread.startDaemon('b2s-lock-heartbeat') {
        while (true) {
            sleep(60000)
            if (lock.exists()) {
                lock.setLastModified(System.currentTimeMillis())
            }
        }
    }
    // Released after everything else, publishing included (Nextflow exits through System.exit).
    Runtime.runtime.addShutdownHook(new Thread({ ->
        if (lock.exists() && mine()) {
            lock.delete()
        }
    } as Runnable))
}

/*
 * Name of the folder inside --outdir that tasks publish into during a run. conf/modules.config
 * spells it out too (a config file cannot call this function): change both together.
 */
def stagingName() {
    return '.nf-bulk2single.staging'
}

/*
 * <outdir>/.nf-bulk2single.staging: the publishDir root and collectFile storeDir of every output.
 */
def stagingDir() {
    return "${params.outdir}/${stagingName()}".toString()
}

/*
 * Move every file below `from` to the same relative path below `into`, replacing files there
 * (as publishDir overwrites them), then remove `from`. Same file system: each move is one rename.
 * Relative symlinks (publish_dir_mode rellink) are re-made relative to their new folder.
 */
def moveTree(java.nio.file.Path from, java.nio.file.Path into) {
    def files = []
    java.nio.file.Files.walk(from).withCloseable { stream ->
        stream.filter { p -> !java.nio.file.Files.isDirectory(p, java.nio.file.LinkOption.NOFOLLOW_LINKS) }
            .forEach { p -> files << p }
    }
    files.each { source ->
        def target = into.resolve(from.relativize(source).toString())
        java.nio.file.Files.createDirectories(target.parent)
        def link = java.nio.file.Files.isSymbolicLink(source) ? java.nio.file.Files.readSymbolicLink(source) : null
        if (link != null && !link.absolute) {
            def dest = source.parent.resolve(link).normalize()
            java.nio.file.Files.deleteIfExists(target)
            java.nio.file.Files.createSymbolicLink(target, target.parent.relativize(dest))
            java.nio.file.Files.delete(source)
            return
        }
        def atomic = source.fileSystem == java.nio.file.FileSystems.default
        try {
            if (atomic) {
                java.nio.file.Files.move(source, target, java.nio.file.StandardCopyOption.REPLACE_EXISTING,
                                         java.nio.file.StandardCopyOption.ATOMIC_MOVE)
            }
        } catch (java.nio.file.AtomicMoveNotSupportedException e) {
            atomic = false
        }
        if (!atomic) {
            // object stores, or another file system: copy and delete
            java.nio.file.Files.move(source, target, java.nio.file.StandardCopyOption.REPLACE_EXISTING)
        }
    }
    from.deleteDir()
    return files.size()
}

/*
 * Publish transactionally: tasks publish into stagingDir() while the run goes on; at exit the
 * folder is moved into --outdir when the run succeeded, and deleted when it failed or was
 * stopped, so a failed run leaves --outdir as it was (Nextflow's own execution_* records in
 * pipeline_info/ excepted). Nextflow waits for every publishDir copy before the onComplete
 * handlers run. Call after acquireOutdirLock(): the lock holder owns the staging folder, so a
 * leftover one (a killed run) is deleted first.
 */
def publishOnSuccess() {
    def wf = workflow
    def outdir = params.outdir?.toString()
    if (!outdir) {
        return
    }
    def root = isRemotePath(outdir) ? file(outdir) : localOutdir().toPath()
    def staging = root.resolve(stagingName())
    if (java.nio.file.Files.exists(staging)) {
        log.warn("--outdir ${outdir}: deleting ${stagingName()} left by a run that was killed (its results were never published)")
        staging.deleteDir()
    }
    def discard = { ->
        try {
            if (java.nio.file.Files.exists(staging)) {
                staging.deleteDir()
            }
        } catch (Exception e) {
            log.debug("cannot delete ${staging}: ${e.message}")
        }
    }
    wf.onComplete {
        if (!wf.success) {
            discard()
            log.warn("nothing was published to ${outdir} because the run failed; the finished tasks stay in the work folder: fix the problem and run again with -resume to reuse them")
            return
        }
        if (!java.nio.file.Files.exists(staging)) {
            return
        }
        try {
            moveTree(staging, root)
        } catch (Exception e) {
            log.error("ERROR: --outdir ${outdir}: the results could not be moved there from ${staging} (${e.message}); they are in ${staging}: move them by hand or run again with -resume")
        }
    }
    // A publishDir copy still running when a failed run aborted may land after onComplete.
    Runtime.runtime.addShutdownHook(new Thread({ ->
        if (!wf.success) {
            discard()
        }
    } as Runnable))
}

/*
 * Remove what Nextflow itself created in --outdir for a run that stops on the head node before
 * any task: this run's empty execution trace, then pipeline_info/ and --outdir when left empty.
 */
def discardOwnRunRecords() {
    def outdir = params.outdir?.toString()
    if (!outdir || isRemotePath(outdir)) {
        return
    }
    def dir = localOutdir()
    def traceFile = nextflow.Global.session?.config?.navigate('trace.file')
    if (traceFile) {
        def trace = new File(traceFile.toString())
        trace = trace.absolute ? trace : new File(workflow.launchDir.toString(), traceFile.toString())
        if (trace.isFile() && trace.readLines().size() <= 1) {
            trace.delete()
        }
    }
    def info = new File(dir, 'pipeline_info')
    if (info.isDirectory() && !info.list()) {
        info.delete()
    }
    if (dir.isDirectory() && !dir.list()) {
        dir.delete()
    }
}

/*
 * {staged name -> the user's path} for the input files a task stages (under input/ or by name).
 */
def stagedInputs() {
    def names = [:]
    ['bulk', 'reference', 'gene_map', 'samplesheet', 'markers', 'vae_weights'].each { key ->
        def value = params[key]
        if (value) {
            names[new File(value.toString()).name] = value.toString()
        }
    }
    return names
}

/*
 * `text` with staged input paths (input/x, or x itself for --vae_weights) replaced by the user's paths.
 */
def userPaths(String text, Map staged) {
    def out = text
    staged.each { name, path ->
        def quoted = java.util.regex.Pattern.quote(name)
        def repl = java.util.regex.Matcher.quoteReplacement(path)
        out = out.replaceAll("(?<![\\w./-])input/${quoted}(?![\\w.-])", repl)
        if (params.vae_weights && path == params.vae_weights.toString()) {
            out = out.replaceAll("(?<![\\w./-])${quoted}(?![\\w.-])", repl)
        }
    }
    return out
}

/*
 * Lines of a task's stdout and stderr, each line once, in order.
 */
def taskLogLines(dir) {
    def seen = new LinkedHashSet()
    ['.command.err', '.command.out'].each { name ->
        def file = dir.resolve(name)
        try {
            if (java.nio.file.Files.exists(file)) {
                file.text.readLines().each { line -> seen << line.trim() }
            }
        } catch (Exception e) {
            log.debug("cannot read ${file}: ${e.message}")
        }
    }
    return seen.toList()
}

/*
 * The WARNING: lines a finished task printed, as 'STAGE<TAB>group<TAB>warning' lines (user paths).
 */
def taskWarnings(String stage, String group, dir) {
    def staged = stagedInputs()
    return taskLogLines(dir)
        .findAll { line -> line.startsWith('WARNING: ') }
        .collect { line -> warningRow(stage, group, userPaths(line.substring(9).trim(), staged)) + '\n' }
        .join('')
}

/*
 * 'STAGE<TAB>group<TAB>warning' of one warning; a task of several groups (--groups_per_task) tags
 * each warning '[group=<name>] ...' (b2s.errors.warning_group), which names its group here.
 */
def warningRow(String stage, String group, String text) {
    def tagged = (text =~ /^\[group=(.*?)\] (.*)$/)
    if (tagged.matches()) {
        return "${stage}\t${tagged.group(1)}\t${tagged.group(2)}".toString()
    }
    return "${stage}\t${group ?: ''}\t${text}".toString()
}

/*
 * The diagnosis of a failed task from Nextflow's error report: [warnings, error line], or null
 * when the failure was not a task's (then Nextflow's own message is already the diagnosis).
 */
def failedTaskDiagnosis(String report) {
    if (!report) {
        return null
    }
    def lines = report.readLines()
    def at = lines.findIndexOf { line -> line.trim() == 'Work dir:' }
    if (at < 0 || at + 1 >= lines.size()) {
        return null
    }
    def workDir = lines[at + 1].trim()
    def proc = (report =~ /Error executing process > '([^']+)'/)
    def name = proc.find() ? proc.group(1) : 'a task'
    def stage = name.tokenize(' ')[0].tokenize(':')[-1]
    def group = (name =~ /\(([^)]*)\)/).find() ? (name =~ /\(([^)]*)\)/)[0][1] : ''
    def staged = stagedInputs()
    def logLines = taskLogLines(file(workDir))
    def warnings = logLines.findAll { line -> line.startsWith('WARNING: ') }
        .collect { line -> warningRow(stage, group, userPaths(line.substring(9).trim(), staged)) }
    def errors = logLines.findAll { line -> line.startsWith('ERROR: ') }
    def where = "(${name}; full log: ${workDir}/.command.log)"
    if (errors) {
        return [warnings, "${userPaths(errors[-1], staged)} ${where}".toString()]
    }
    def status = (report =~ /terminated with an error exit status \((\d+)\)/)
    def code = status.find() ? status.group(1) : '?'
    def last = logLines.findAll { line -> line }.with { all -> all ? all[-1] : '(no output)' }
    return [warnings, "ERROR: ${name} failed with exit status ${code}; its last output line: ${userPaths(last, staged)} ${where}".toString()]
}

/*
 * At exit, print the task warnings (one line each, with stage and group) and, when a task
 * failed, that task's ERROR: line as the very last console line (a JVM shutdown hook runs after
 * Nextflow's own error block and closing messages).
 */
def reportAtExit(ch_warnings) {
    def wf = workflow
    def collected = java.util.Collections.synchronizedList([])
    def finalLines = java.util.Collections.synchronizedList([])
    ch_warnings.subscribe { file -> collected.addAll(file.text.readLines().findAll { line -> line.trim() }) }
    wf.onComplete {
        try {
            def warnings = new ArrayList(collected)
            def error = null
            if (!wf.success) {
                def diagnosis = failedTaskDiagnosis(wf.errorReport)
                if (diagnosis) {
                    warnings.addAll(diagnosis[0])
                    error = diagnosis[1]
                }
            }
            warnings = warnings.unique()
            if (warnings) {
                finalLines << "WARN: ${warnings.size()} task warning(s) (also at the top of the report):".toString()
                warnings.each { line ->
                    def parts = line.split('\t', 3)
                    def where = parts.size() == 3 ? (parts[1] ? "${parts[0]} ${parts[1]}" : parts[0]) : 'task'
                    finalLines << "  [${where}] ${parts[-1]}".toString()
                }
            }
            if (error) {
                finalLines << error
            }
        } catch (Exception e) {
            log.warn("could not summarise the run's task warnings and errors (${e.message}); see each task's .command.log")
        }
    }
    Runtime.runtime.addShutdownHook(new Thread({ ->
        if (finalLines) {
            System.out.flush()
            System.err.flush()
            System.out.println(finalLines.join('\n'))
            System.out.flush()
        }
    } as Runnable))
}
