/*
 * Test harness (tests/pipeline/test_run_guards.py): params.threads threads race for one stale
 * lock through run_guard's takeLock, params.rounds times; prints 'round <i> winners <n>'.
 */
include { takeLock } from '../../subworkflows/local/run_guard'

workflow {
    def lock = new File(params.lock.toString())
    (1..(params.rounds as int)).each { round ->
        lock.text = '{"run": 0}\n'
        def go = new java.util.concurrent.CountDownLatch(1)
        def winners = java.util.Collections.synchronizedList([])
        def threads = (1..(params.threads as int)).collect { i ->
            Thread.start {
                go.await()
                def res = takeLock(lock, "{\"run\": ${i}}\n".toString(), { other, file -> other?.run == 0 ? 'stale' : null }) { other, why -> }
                if (res.taken) {
                    winners << i
                }
            }
        }
        go.countDown()
        threads.each { t -> t.join() }
        def holder = new groovy.json.JsonSlurper().parseText(lock.text).run
        println("round ${round} winners ${winners.size()} holder_is_winner ${winners == [holder]}")
        lock.delete()
    }
}
