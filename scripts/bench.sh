#!/usr/bin/env bash
# jitocsp performance benchmark: every figure beside its reference, measured in the same run.
#
#   scripts/bench.sh [--quick] [--runs N] [--duration S] [--no-build] [--keep]
#
#   --quick        1 run of 3 s per figure (default: 3 runs of 10 s; medians are reported)
#   --runs N       runs per figure
#   --duration S   seconds per wrk run
#   --no-build     use target/release/jitocsp as it is (default: cargo build --release first)
#   --keep         keep the work directory (requests, index, logs) and the bench issuer's rows
#
# Figures (see /work/shared/PERFORMANCE.md and docs/benchmarks.md):
#   hot        jitocsp, answers in Redis, local tier off   vs nginx serving a file of the same size
#   hot-local  jitocsp, local tier on                      vs the same nginx
#   cold       jitocsp, every request a new serial         vs openssl ocsp -index ... -multi 2
#              (both with Connection: close)
#   signatures jitocsp signatures/s during the cold runs   vs the raw rate of the P-256 backend
#              in use (ring by default; 2 threads);
#              openssl speed ecdsap256 printed as the machine's ceiling
# Client: wrk -t2 -c64 on loopback (keep-alive for hot, Connection: close for cold).
#
# Output: a table on stdout and in target/bench/report.txt, the same as JSON in
# target/bench/report.json. Exit status: 0 when every measurement worked (whether or not the
# targets were met: this is a measurement, not a test), 1 when something did not work
# (a wrong answer, HTTP or socket errors, an exhausted serial list, a process that died),
# 2 on bad usage.
#
# Environment: DATABASE_URL / REDIS_URL (default: scripts/services.sh up and .local/env);
# JITOCSP_BENCH_THREADS (2), JITOCSP_BENCH_CONNECTIONS (64), JITOCSP_BENCH_HOT_CERTS (1000),
# JITOCSP_BENCH_COLD_MAX_RATE (60000 req/s: sizes the cold serial lists),
# JITOCSP_BENCH_REF_MAX_RATE (40000 req/s: the same for openssl ocsp),
# JITOCSP_BENCH_WORKERS (2: JITOCSP_SERVER_WORKERS and nginx worker_processes),
# JITOCSP_BENCH_P256_BACKEND (ring: jitocsp's signing.p256_backend, and the raw rate compared).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BENCH_DIR="$ROOT/scripts/bench"
OUT_DIR="$ROOT/target/bench"

RUNS=3
DURATION=10
QUICK=0
BUILD=1
KEEP=0
usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; RUNS=1; DURATION=3 ;;
        --runs) [ $# -ge 2 ] || usage; RUNS="$2"; shift ;;
        --duration) [ $# -ge 2 ] || usage; DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h|--help) usage ;;
        *) printf 'bench: unknown argument %q\n' "$1" >&2; usage ;;
    esac
    shift
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --runs must be a positive integer" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --duration must be a positive integer (seconds)" >&2; exit 2; }

THREADS="${JITOCSP_BENCH_THREADS:-2}"
CONNS="${JITOCSP_BENCH_CONNECTIONS:-64}"
HOT_CERTS="${JITOCSP_BENCH_HOT_CERTS:-1000}"
COLD_MAX_RATE="${JITOCSP_BENCH_COLD_MAX_RATE:-60000}"
REF_MAX_RATE="${JITOCSP_BENCH_REF_MAX_RATE:-40000}"
WORKERS="${JITOCSP_BENCH_WORKERS:-2}"
BACKEND="${JITOCSP_BENCH_P256_BACKEND:-ring}"   # signing.p256_backend of the jitocsp under test
WARMUP=$(( QUICK ? 1 : 2 ))   # seconds of unrecorded wrk before each figure's runs

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ tools

"$ROOT/scripts/services.sh" ensure-cmd wrk wrk nginx nginx openssl openssl curl curl python3 python3 psql postgresql-client
python3 -c 'import cryptography' 2>/dev/null || die "python3 module 'cryptography' is missing (pip install cryptography)"

# ------------------------------------------------------------------ processes we start

PIDS=()          # every background process we started (killed on exit)
OSSL_PID=""
WORK=""
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
ISSUER="bench-$STAMP-$$"
PREFIX="bench-$STAMP-$$"
FAILED=()        # what did not work (the script exits 1 if non-empty)

stop_pid() {     # stop_pid PID: TERM, wait up to 5 s, then KILL
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# openssl ocsp -multi: children ignore SIGTERM (and OpenSSL 3.0's children spin forever on a
# connection the client closed before sending a request, as wrk does when a run ends), so:
# TERM the parent (it stops respawning), KILL its children, then wait for the parent.
stop_openssl() {
    local pid="$1" kids
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kids="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    kill -TERM "$pid" 2>/dev/null || true
    sleep 0.2
    # shellcheck disable=SC2086
    [ -z "$kids" ] || kill -KILL $kids 2>/dev/null || true
    kids="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [ -z "$kids" ] || kill -KILL $kids 2>/dev/null || true
    stop_pid "$pid"
}

cleanup() {
    local rc=$?
    set +e
    [ -n "$OSSL_PID" ] && stop_openssl "$OSSL_PID"
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ -n "${REDIS_URL:-}" ] && command -v redis-cli >/dev/null 2>&1; then
        # Our responses only: everything under the bench key prefix.
        redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null \
            | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
    fi
    if [ "$KEEP" -eq 0 ] && [ -n "${ISSUER_ADDED:-}" ] && [ -n "${DATABASE_URL:-}" ]; then
        # The bench issuer's certificate rows (millions) go; the issuer row stays (audit log).
        psql -X -q "$DATABASE_URL" -v ON_ERROR_STOP=1 -v issuer="$ISSUER" >/dev/null 2>&1 <<'SQL' \
            || log "could not delete the certificates of issuer $ISSUER (harmless; delete them by hand)"
DELETE FROM certificates WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
SQL
    fi
    if [ -n "$WORK" ] && [ "$KEEP" -eq 0 ]; then
        rm -rf "$WORK"
    elif [ -n "$WORK" ]; then
        log "work directory kept: $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {    # wait_http URL PID WHAT: until URL answers 2xx (30 s), or PID died
    local url="$1" pid="$2" what="$3" i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (log: $4)"
        curl -fsS -o /dev/null -m 2 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$what did not answer $url within 30 s (log: $4)"
}

# ------------------------------------------------------------------ set-up

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/report.txt" "$OUT_DIR/report.json" "$OUT_DIR/results.txt"   # no stale report on failure
WORK="$(mktemp -d "$OUT_DIR/work.XXXXXX")"
chmod 0755 "$WORK"
RESULTS="$WORK/results.txt"
: >"$RESULTS"

if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release --bin jitocsp"
    (cd "$ROOT" && cargo build --release --bin jitocsp -q) || die "cargo build --release failed"
fi
JITOCSP="$ROOT/target/release/jitocsp"
[ -x "$JITOCSP" ] || die "$JITOCSP not found (run without --no-build)"

log "raw signing-rate helper (scripts/bench/p256speed, built against the workspace's Cargo.lock)"
P256_SRC="$OUT_DIR/p256speed-src"
rm -rf "$P256_SRC"
mkdir -p "$P256_SRC"
cp -r "$BENCH_DIR/p256speed/Cargo.toml" "$BENCH_DIR/p256speed/src" "$P256_SRC/"
cp "$ROOT/Cargo.lock" "$P256_SRC/Cargo.lock"   # same p256/ecdsa versions as jitocsp
(cd "$P256_SRC" && CARGO_TARGET_DIR="$OUT_DIR/p256speed-target" cargo build --release -q --offline 2>/dev/null \
    || CARGO_TARGET_DIR="$OUT_DIR/p256speed-target" cargo build --release -q) || die "building p256speed failed"
P256SPEED="$OUT_DIR/p256speed-target/release/p256speed"

if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    "$ROOT/scripts/services.sh" up
    # shellcheck disable=SC1091
    . "$ROOT/.local/env"
fi
export DATABASE_URL REDIS_URL
"$ROOT/scripts/services.sh" ensure-cmd redis-cli redis-tools

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"
log "work directory $WORK; issuer $ISSUER; Redis key prefix $PREFIX; load average $LOAD_START"
cd "$WORK"
openssl ecparam -name prime256v1 -genkey -noout -out ca.sec1 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in ca.sec1 -out ca.key
openssl req -x509 -new -key ca.key -subj "/CN=jitocsp bench CA $STAMP" -days 30 -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
chmod 0644 ca.key

log "jitocsp migrate; admin issuer add $ISSUER"
"$JITOCSP" migrate >/dev/null
"$JITOCSP" admin issuer add --name "$ISSUER" --cert ca.pem --signer "file:$WORK/ca.key" >/dev/null
ISSUER_ADDED=1

# Serials: 8 random bytes (first in 10..7f) || a counter. Ranges: hot 0.., cold for jitocsp
# 2^32.., cold for openssl 2^33.. (its own index). Each cold run walks its own slice.
SERIAL_PREFIX="$(printf '%02x' $(( 0x10 + RANDOM % 0x70 )))$(openssl rand -hex 7)"
COLD_PER_RUN=$(( COLD_MAX_RATE * DURATION ))
COLD_WARM=$(( COLD_MAX_RATE * WARMUP ))
COLD_TOTAL=$(( COLD_WARM + RUNS * COLD_PER_RUN + 100 ))    # +100: the verified sample
REF_PER_RUN=$(( REF_MAX_RATE * DURATION ))
REF_WARM=$(( REF_MAX_RATE * WARMUP ))
REF_TOTAL=$(( REF_WARM + RUNS * REF_PER_RUN + 100 ))
mk() { python3 "$BENCH_DIR/mkreqs.py" --ca ca.pem --prefix "$SERIAL_PREFIX" "$@"; }
log "generating requests: $HOT_CERTS hot, $COLD_TOTAL cold (jitocsp), $REF_TOTAL cold (openssl ocsp)"
mk --start 0 --count "$HOT_CERTS" --paths hot.paths --import hot.import --sample hot.sample --sample-step $(( HOT_CERTS / 10 > 0 ? HOT_CERTS / 10 : 1 ))
mk --start $(( 1 << 32 )) --count "$COLD_TOTAL" --paths cold.paths --import cold.import
mk --start $(( 1 << 33 )) --count "$REF_TOTAL" --paths ref.paths --index index.txt
# Slices: the first 100 lines of each list hold the verified sample, then the warm-up, then runs.
# (awk, not head/tail pipelines: those die of SIGPIPE under pipefail.)
awk 'NR <= 100 && NR % 10 == 1 { split($0, f, ","); print f[1] }' cold.import >cold.sample.serials
awk 'NR <= 100 && NR % 10 == 1' cold.paths | paste -d' ' cold.sample.serials - >cold.sample
awk -F'\t' 'NR <= 100 && NR % 10 == 1 { print $4 }' index.txt >ref.sample.serials
awk 'NR <= 100 && NR % 10 == 1' ref.paths | paste -d' ' ref.sample.serials - >ref.sample
split_runs() {  # split_runs FILE WARM PER_RUN OUT_PREFIX -> OUT.warm.paths, OUT.run1.paths...
    awk -v warm="$2" -v per="$3" -v runs="$RUNS" -v out="$4" '
        NR <= 100 { next }
        { i = NR - 101 }
        i < warm { print > (out ".warm.paths"); next }
        { r = int((i - warm) / per) + 1 }
        r <= runs { print > (out ".run" r ".paths") }' "$1"
}
split_runs cold.paths "$COLD_WARM" "$COLD_PER_RUN" cold
split_runs ref.paths "$REF_WARM" "$REF_PER_RUN" ref

log "importing $(( HOT_CERTS + COLD_TOTAL )) certificates (admin import, stdin)"
t0=$(date +%s.%N)
cat hot.import cold.import | "$JITOCSP" admin import --issuer "$ISSUER" - >import.log 2>&1 \
    || { cat import.log >&2; die "admin import failed"; }
t1=$(date +%s.%N)
IMPORT_SECONDS=$(python3 -c "print(round($t1 - $t0, 1))")
log "imported in ${IMPORT_SECONDS}s"

# ------------------------------------------------------------------ helpers

metrics_sum() {  # metrics_sum FILE NAME [LABEL-SUBSTRING]: sum of every sample of NAME
    awk -v name="$2" -v want="${3:-}" '
        { split($1, a, "{") }
        a[1] == name && (want == "" || index($1, want) > 0) { s += $NF }
        END { printf "%.0f\n", s }' "$1"
}
scrape() { curl -fsS -m 5 "http://$JIT_METRICS/metrics" >"$1" || die "cannot scrape http://$JIT_METRICS/metrics"; }

# CPU accounting, to show how much of the machine something else used during a run (the
# machine is shared): all CPUs' busy time from /proc/stat, minus the server under test (and
# its child processes) and wrk (a reaped child of this shell), in clock ticks.
cpu_sample() {  # cpu_sample SERVER_PID... -> "busy total ours"
    local pids="$*" kids p
    kids="$(for p in $pids; do ps -o pid= --ppid "$p" 2>/dev/null; done | tr '\n' ' ')"
    {
        head -n1 /proc/stat
        for p in $pids $kids; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print "proc", $12 + $13 }'; done
        sed 's/^.*) //' "/proc/$$/stat" | awk '{ print "proc", $14 + $15 }'
    } | awk '$1 == "cpu" { tot = 0; for (i = 2; i <= NF; i++) tot += $i; busy = tot - $5 - $6 }
             $1 == "proc" { ours += $2 }
             END { print busy, tot, ours }'
}

# run_wrk FIGURE ROLE NAME RUN URL PATHS MODE [extra wrk args...]: one recorded (or, with
# RUN=warm, unrecorded) wrk run; appends "key=value ..." to $RESULTS.
run_wrk() {
    local figure="$1" role="$2" name="$3" run="$4" url="$5" paths="$6" mode="$7" dur="$DURATION"
    shift 7
    [ "$run" = warm ] && dur="$WARMUP"
    local out="$WORK/wrk.$figure.$role.$run.txt" extra=""
    local before="$WORK/m.before" after="$WORK/m.after"
    [ "$name" = jitocsp ] && scrape "$before"
    local server_pid="$JIT_PID $BACKEND_PIDS" c0 c1
    [ "$name" = nginx ] && server_pid="$NGX_PID"
    [ "$name" = openssl-ocsp ] && server_pid="$OSSL_PID"
    c0="$(cpu_sample $server_pid)"
    wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "$@" -s "$BENCH_DIR/paths.lua" "$url" -- "$paths" "$mode" "$THREADS" \
        >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($figure $role run $run)"; }
    c1="$(cpu_sample $server_pid)"
    extra=" other_cpu_pct=$(awk -v a="$c0" -v b="$c1" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; o = (y[1] - x[1]) - (y[3] - x[3]); if (o < 0) o = 0;
        printf "%.1f", (t > 0 ? 100 * o / t : 0) }')"
    local line
    line="$(grep '^BENCH ' "$out" | tail -n1 | cut -d' ' -f2-)"
    [ -n "$line" ] || { cat "$out" >&2; die "wrk printed no BENCH line ($figure $role run $run)"; }
    if [ "$name" = jitocsp ]; then
        scrape "$after"
        local k
        for k in signatures:jitocsp_signatures_total: db_reads:jitocsp_db_reads_total: \
                 redis_hit:jitocsp_cache_lookups_total:'tier="redis",result="hit"' \
                 local_hit:jitocsp_cache_lookups_total:'tier="local",result="hit"' \
                 ocsp_ok:jitocsp_requests_total:'outcome="successful"' \
                 ocsp_all:jitocsp_requests_total: overloaded:jitocsp_signer_overloaded_total: \
                 redis_errors:jitocsp_redis_errors_total: db_errors:jitocsp_db_errors_total:; do
            local key="${k%%:*}" rest="${k#*:}"
            local metric="${rest%%:*}" label="${rest#*:}"
            local a b
            a="$(metrics_sum "$before" "$metric" "$label")"
            b="$(metrics_sum "$after" "$metric" "$label")"
            extra="$extra m_$key=$(( b - a ))"
        done
    fi
    if [ "$run" != warm ]; then
        echo "run figure=$figure role=$role name=$name run=$run $line$extra" >>"$RESULTS"
        log "  $figure $role ($name) run $run: $(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$line") req/s"
    fi
}

# verify_sample URL SAMPLE DIR: fetch each sample serial and check it with openssl ocsp.
verify_sample() {
    local url="$1" sample="$2" dir="$3" close="${4:-}" serial path n=0
    python3 "$BENCH_DIR/fetch.py" --url "$url" --sample "$sample" --out "$dir" $close >"$dir.fetch" \
        || die "fetching the verification sample from $url failed"
    while read -r serial path; do
        local out
        out="$(openssl ocsp -respin "$dir/$serial.der" -issuer ca.pem -serial "0x$serial" -CAfile ca.pem 2>&1)" || true
        if ! grep -q '^Response verify OK' <<<"$out" || ! grep -qi "^0x$serial: good" <<<"$out"; then
            FAILED+=("wrong answer from $url for serial $serial: $(tr '\n' ' ' <<<"$out")")
            log "WRONG ANSWER from $url for serial $serial:"
            printf '%s\n' "$out" >&2
            die "a sampled response did not verify as 'good' (see above)"
        fi
        n=$((n + 1))
    done <"$sample"
    log "  verified $n responses from $url with openssl ocsp -respin (signature OK, status good)"
}

# Redis and Postgres (postmaster and its backends) do jitocsp's work: count them as its CPU.
listener_pid() {  # listener_pid URL -> pid of the process listening on its port (or nothing)
    local port
    port="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port or "")' "$1" 2>/dev/null)"
    [ -n "$port" ] && ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | sort -un | awk 'NR == 1'
    return 0
}
BACKEND_PIDS="$(listener_pid "$REDIS_URL") $(listener_pid "$DATABASE_URL")"
log "CPU accounting: Redis and Postgres pids $BACKEND_PIDS count as jitocsp's"
JIT_PORT="$(free_port)"; JIT_METRICS_PORT="$(free_port)"; NGX_PORT="$(free_port)"; REF_PORT="$(free_port)"
JIT="127.0.0.1:$JIT_PORT"; JIT_METRICS="127.0.0.1:$JIT_METRICS_PORT"
JIT_PID=""

start_jitocsp() {  # start_jitocsp LOCAL_ENTRIES TAG
    local log="$WORK/jitocsp.$2.log"
    JITOCSP_CACHE_LOCAL_ENTRIES="$1" JITOCSP_CACHE_KEY_PREFIX="$PREFIX" JITOCSP_SERVER_WORKERS="$WORKERS" \
        JITOCSP_SIGNING_P256_BACKEND="$BACKEND" \
        "$JITOCSP" serve --listen "$JIT" --metrics-listen "$JIT_METRICS" >"$log" 2>&1 &
    JIT_PID=$!
    PIDS+=("$JIT_PID")
    wait_http "http://$JIT_METRICS/healthz" "$JIT_PID" "jitocsp serve" "$log"
}
stop_jitocsp() {
    kill -0 "$JIT_PID" 2>/dev/null || FAILED+=("jitocsp serve died during the run (log: $WORK/jitocsp.*.log)")
    stop_pid "$JIT_PID"
}

start_openssl() {  # a fresh responder: see stop_openssl for why one per run
    openssl ocsp -index index.txt -port "$REF_PORT" -rsigner ca.pem -rkey ca.key -CA ca.pem \
        -multi 2 -nmin 1 -resp_no_certs -resp_key_id >>"$WORK/openssl-ocsp.log" 2>&1 &
    OSSL_PID=$!
    local i probe
    probe="$(head -n1 ref.sample | cut -d' ' -f2)"
    for i in $(seq 1 600); do
        kill -0 "$OSSL_PID" 2>/dev/null || die "openssl ocsp exited during start-up (log: $WORK/openssl-ocsp.log)"
        curl -fsS -o /dev/null -m 5 -H 'Connection: close' "http://127.0.0.1:$REF_PORT$probe" 2>/dev/null && return 0
        sleep 0.1
    done
    die "openssl ocsp did not answer within 60 s"
}

# ------------------------------------------------------------------ hot (local tier off)

start_jitocsp 0 nolocal
log "hot: warming $HOT_CERTS certificates (one GET each), verifying a sample"
python3 "$BENCH_DIR/fetch.py" --url "http://$JIT" --paths hot.paths >hot.warm.fetch || die "warming the hot set failed"
mkdir -p verify
verify_sample "http://$JIT" hot.sample verify/hot
read -r _ _ _ _ BODY_SIZE _ _ HEAD_SIZE _ <hot.warm.fetch
JIT_RESPONSE_BYTES=$(( BODY_SIZE + HEAD_SIZE ))
log "  response: $BODY_SIZE bytes of DER (+ $HEAD_SIZE bytes of status line and headers)"

# nginx: the reference, serving one real response (same size) for every path.
mkdir -p www ngx-tmp
# ECDSA signatures vary by a byte or two in DER: pick a response of the median size.
for f in verify/hot/*.der; do
    if [ "$(stat -c %s "$f")" -eq "$BODY_SIZE" ] || [ ! -e www/resp.der ]; then cp "$f" www/resp.der; fi
done
BODY_SIZE="$(stat -c %s www/resp.der)"
chmod -R a+rX www
NGX_USER=""
[ "$(id -u)" -eq 0 ] && NGX_USER="user root root;"
cat >nginx.conf <<EOF
# generated by scripts/bench.sh: the hot-path reference, a static file of one response's size
$NGX_USER
worker_processes $WORKERS;
daemon off;
master_process on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/ngx-tmp/body;
    proxy_temp_path $WORK/ngx-tmp/proxy;
    fastcgi_temp_path $WORK/ngx-tmp/fastcgi;
    uwsgi_temp_path $WORK/ngx-tmp/uwsgi;
    scgi_temp_path $WORK/ngx-tmp/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    types { }
    default_type application/ocsp-response;
    server {
        listen 127.0.0.1:$NGX_PORT;
        root $WORK/www;
        location / { rewrite ^ /resp.der break; }
    }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" >"$WORK/nginx.out" 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")
wait_http "http://127.0.0.1:$NGX_PORT/x" "$NGX_PID" nginx "$WORK/nginx-error.log"
python3 "$BENCH_DIR/fetch.py" --url "http://127.0.0.1:$NGX_PORT" --paths <(head -n 3 hot.paths) >ngx.fetch \
    || die "nginx does not serve the response file"
read -r _ _ _ _ NGX_BODY _ _ NGX_HEAD _ <ngx.fetch
NGX_RESPONSE_BYTES=$(( NGX_BODY + NGX_HEAD ))
[ "$NGX_BODY" -eq "$BODY_SIZE" ] || die "nginx serves $NGX_BODY bytes, the response is $BODY_SIZE"

hot_figure() {  # hot_figure FIGURE
    local fig="$1" r
    log "$fig: warm-up ${WARMUP}s each, then $RUNS x ${DURATION}s, wrk -t$THREADS -c$CONNS keep-alive"
    run_wrk "$fig" reference nginx warm "http://127.0.0.1:$NGX_PORT" hot.paths cycle
    run_wrk "$fig" subject jitocsp warm "http://$JIT" hot.paths cycle
    for r in $(seq 1 "$RUNS"); do  # alternate the order so drift hits both sides alike
        if [ $((r % 2)) -eq 1 ]; then
            run_wrk "$fig" reference nginx "$r" "http://127.0.0.1:$NGX_PORT" hot.paths cycle
            run_wrk "$fig" subject jitocsp "$r" "http://$JIT" hot.paths cycle
        else
            run_wrk "$fig" subject jitocsp "$r" "http://$JIT" hot.paths cycle
            run_wrk "$fig" reference nginx "$r" "http://127.0.0.1:$NGX_PORT" hot.paths cycle
        fi
    done
}
hot_figure hot
stop_jitocsp

# ------------------------------------------------------------------ hot with the local tier

start_jitocsp 100000 local
log "hot-local: filling the local tier (one GET each)"
python3 "$BENCH_DIR/fetch.py" --url "http://$JIT" --paths hot.paths >hot-local.warm.fetch || die "warming the local tier failed"
verify_sample "http://$JIT" hot.sample verify/hot-local
hot_figure hot-local
stop_jitocsp
stop_pid "$NGX_PID"

# ------------------------------------------------------------------ cold

start_jitocsp 0 cold
log "cold: verifying samples from jitocsp and openssl ocsp (Connection: close)"
verify_sample "http://$JIT" cold.sample verify/cold --close
start_openssl
verify_sample "http://127.0.0.1:$REF_PORT" ref.sample verify/ref --close
python3 "$BENCH_DIR/fetch.py" --url "http://127.0.0.1:$REF_PORT" --paths <(sed -n 2,3p ref.paths) --close >ref.fetch \
    || die "openssl ocsp did not answer"
read -r _ _ _ _ REF_BODY _ _ REF_HEAD _ <ref.fetch
REF_RESPONSE_BYTES=$(( REF_BODY + REF_HEAD ))
python3 "$BENCH_DIR/fetch.py" --url "http://$JIT" --paths <(sed -n 2,3p cold.paths) --close >cold.fetch \
    || die "jitocsp did not answer a cold request"
read -r _ _ _ _ COLD_BODY _ _ COLD_HEAD _ <cold.fetch
COLD_RESPONSE_BYTES=$(( COLD_BODY + COLD_HEAD ))

log "cold: warm-up ${WARMUP}s each, then $RUNS x ${DURATION}s, wrk -t$THREADS -c$CONNS, Connection: close, a new serial per request"
CLOSE=(-H 'Connection: close')
run_wrk cold reference openssl-ocsp warm "http://127.0.0.1:$REF_PORT" ref.warm.paths walk "${CLOSE[@]}"
stop_openssl "$OSSL_PID"; OSSL_PID=""
run_wrk cold subject jitocsp warm "http://$JIT" cold.warm.paths walk "${CLOSE[@]}"
for r in $(seq 1 "$RUNS"); do
    ref_run() {
        start_openssl
        run_wrk cold reference openssl-ocsp "$r" "http://127.0.0.1:$REF_PORT" "ref.run$r.paths" walk "${CLOSE[@]}"
        stop_openssl "$OSSL_PID"; OSSL_PID=""
    }
    if [ $((r % 2)) -eq 1 ]; then
        ref_run
        run_wrk cold subject jitocsp "$r" "http://$JIT" "cold.run$r.paths" walk "${CLOSE[@]}"
    else
        run_wrk cold subject jitocsp "$r" "http://$JIT" "cold.run$r.paths" walk "${CLOSE[@]}"
        ref_run
    fi
done
stop_jitocsp

# ------------------------------------------------------------------ raw signing rates

SPEED_SECONDS=3
log "signing ceilings: ring and p256 (1 and 2 threads), openssl speed ecdsap256 (1 process, -multi 2), ${SPEED_SECONDS}s each"
"$P256SPEED" "$SPEED_SECONDS" ring 1 2 >p256speed.txt || die "p256speed failed"
"$P256SPEED" "$SPEED_SECONDS" p256 1 2 >>p256speed.txt || die "p256speed failed"
while read -r line; do echo "speed $line" >>"$RESULTS"; done <p256speed.txt
# "                              sign    verify    sign/s verify/s" / " 256 bits ecdsa (nistp256)   0.0000s ... 41234.5 ..."
openssl_sign_rate() {
    awk '/ecdsa \(nistp256\)/ { print $(NF-1); found=1 } END { if (!found) exit 1 }' "$1"
}
openssl speed -seconds "$SPEED_SECONDS" ecdsap256 >openssl-speed-1.txt 2>&1 || die "openssl speed failed"
openssl speed -seconds "$SPEED_SECONDS" -multi 2 ecdsap256 >openssl-speed-2.txt 2>&1 || die "openssl speed -multi 2 failed"
R1="$(openssl_sign_rate openssl-speed-1.txt)" || die "cannot parse openssl speed output (openssl-speed-1.txt)"
R2="$(openssl_sign_rate openssl-speed-2.txt)" || die "cannot parse openssl speed -multi 2 output"
echo "speed threads=1 rate=$R1 impl=openssl" >>"$RESULTS"
echo "speed threads=2 rate=$R2 impl=openssl" >>"$RESULTS"

# ------------------------------------------------------------------ report

GIT_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV="$GIT_REV+uncommitted"
{
    echo "meta stamp=$STAMP quick=$QUICK runs=$RUNS duration=$DURATION warmup=$WARMUP threads=$THREADS connections=$CONNS"
    echo "meta backend=$BACKEND workers=$WORKERS hot_certs=$HOT_CERTS cold_per_run=$COLD_PER_RUN ref_per_run=$REF_PER_RUN"
    echo "meta load_start=$LOAD_START load_end=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"
    echo "meta imported=$(( HOT_CERTS + COLD_TOTAL )) import_seconds=$IMPORT_SECONDS git=$GIT_REV cores=$(nproc)"
    echo "meta body_bytes=$BODY_SIZE jitocsp_response_bytes=$JIT_RESPONSE_BYTES nginx_response_bytes=$NGX_RESPONSE_BYTES"
    echo "meta cold_response_bytes=$COLD_RESPONSE_BYTES openssl_response_bytes=$REF_RESPONSE_BYTES openssl_body_bytes=$REF_BODY"
    echo "meta wrk=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}') nginx=$(nginx -v 2>&1 | sed 's#.*/##') openssl=$(openssl version | awk '{print $2}')"
    for f in "${FAILED[@]}"; do echo "failed $f"; done
} >>"$RESULTS"
cp "$RESULTS" "$OUT_DIR/results.txt"
python3 "$BENCH_DIR/report.py" "$RESULTS" "$OUT_DIR/report.txt" "$OUT_DIR/report.json"
