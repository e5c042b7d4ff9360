#!/usr/bin/env bash
# Run a command with a Docker engine available, as `make image` / `make test-image` need it on a
# machine where nothing is installed or running (CI):
#
#   containers/engine.sh run CMD [ARG ...]
#
# - no `dockerd`: installs Debian's docker.io with apt-get (root only);
# - engine not answering: starts `dockerd` with its defaults in the background, runs CMD, then
#   stops the daemon it started (an engine that was already running is left alone);
# - exits with CMD's status.
# Knob: DOCKER (the client, default docker).
set -euo pipefail
DOCKER=${DOCKER:-docker}

[[ ${1:-} == run && $# -ge 2 ]] || { echo "usage: containers/engine.sh run CMD [ARG ...]" >&2; exit 2; }
shift

now() { date +%s; }

if ! command -v dockerd >/dev/null; then
    [[ $(id -u) == 0 ]] || { echo "engine.sh: no dockerd: install docker.io (apt-get install docker.io) as root" >&2; exit 1; }
    t0=$(now)
    echo "[engine] installing docker.io from Debian (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    echo "[engine] docker.io installed in $(( $(now) - t0 )) s"
fi

started=
if ! "$DOCKER" info >/dev/null 2>&1; then
    [[ $(id -u) == 0 ]] || { echo "engine.sh: the Docker engine is not running and only root can start it" >&2; exit 1; }
    log=${TMPDIR:-/tmp}/nf-bulk2single-dockerd.log
    t0=$(now)
    echo "[engine] starting dockerd (log: $log)"
    dockerd >"$log" 2>&1 &
    started=$!
    for _ in $(seq 120); do
        "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$started" 2>/dev/null || { tail -20 "$log" >&2; echo "engine.sh: dockerd exited" >&2; exit 1; }
        sleep 0.5
    done
    "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$log" >&2; echo "engine.sh: dockerd did not answer within 60 s" >&2; exit 1; }
    echo "[engine] dockerd up in $(( $(now) - t0 )) s (pid $started)"
fi

stop() {
    [[ -n $started ]] || return 0
    echo "[engine] stopping the dockerd this run started (pid $started)"
    kill "$started" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$started" 2>/dev/null || return 0; sleep 0.5; done
    echo "[engine] dockerd pid $started still running after 30 s" >&2
}
trap stop EXIT

status=0
"$@" || status=$?
exit $status
