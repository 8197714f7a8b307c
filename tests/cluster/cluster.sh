# Shell functions to start and stop a test cluster from a script; `source` this file.
#
# The harness tears its cluster down when its stdin closes. Started as a bash coprocess, its
# stdin is a pipe from the calling script, so the cluster goes away even when that script is
# killed. Both tests/run and tests/cluster/dev use these.

# build_harness OUT: builds the testcluster binary (Go caches the build).
build_harness() {
    (cd "$(dirname "${BASH_SOURCE[0]}")" && go build -o "$1" ./cmd/testcluster)
}

# start_cluster HARNESS DIR LOG [UP-FLAGS...]: starts a cluster in DIR, logging to LOG, and waits
# until it is ready. Sets CLUSTER_READY (the harness's JSON line), CLUSTER_DIR and CLUSTER_BIN_DIR.
start_cluster() {
    local harness=$1
    CLUSTER_DIR=$2
    CLUSTER_LOG=$3
    shift 3
    coproc CLUSTER { exec "$harness" up --dir "$CLUSTER_DIR" "$@" 2>"$CLUSTER_LOG"; }
    CLUSTER_SUPERVISOR=$CLUSTER_PID
    CLUSTER_IN=${CLUSTER[1]}
    if ! read -r -t 600 -u "${CLUSTER[0]}" CLUSTER_READY; then
        echo "the test cluster did not become ready; last lines of $CLUSTER_LOG:" >&2
        tail -n 40 "$CLUSTER_LOG" >&2
        return 1
    fi
    CLUSTER_BIN_DIR=$(sed -n 's/.*"binDir":"\([^"]*\)".*/\1/p' <<<"$CLUSTER_READY")
}

# stop_cluster [PIDS_COPY]: closes the harness's stdin and waits for its teardown. With an
# argument, first copies DIR/pids.json there, so the caller can check nothing survived.
stop_cluster() {
    [ -n "${CLUSTER_SUPERVISOR:-}" ] || return 0
    if [ -n "${1:-}" ] && [ -f "$CLUSTER_DIR/pids.json" ]; then
        cp "$CLUSTER_DIR/pids.json" "$1"
    fi
    exec {CLUSTER_IN}>&-
    wait "$CLUSTER_SUPERVISOR" 2>/dev/null || true
    CLUSTER_SUPERVISOR=
}

# leftover_pids PIDS_FILE DIR: prints recorded pids that are alive and still name DIR.
leftover_pids() {
    local pid
    for pid in $(grep -o '"pid": *[0-9]*' "$1" | grep -o '[0-9]*$'); do
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$2"; then
            echo "$pid"
        fi
    done
}

# processes_naming DIR: prints the pids of live processes whose command line names DIR (the real
# node's kubelet, containerd and containerd shims, which pids.json may not list yet).
processes_naming() {
    local p
    for p in /proc/[0-9]*; do
        if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF "$1/"; then
            echo "${p#/proc/}"
        fi
    done
}

# mounts_under DIR: prints the mount points at or below DIR (a real node's containers and volumes).
mounts_under() {
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}
