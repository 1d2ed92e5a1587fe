#!/usr/bin/env bash
# The hot path measured with wrk, with the server's CPU time per request beside the rate.
#
#   scripts/wrk-hot.sh [--rounds N] [--duration S] [--local-entries N] [--certs N] BINARY...
#
# For each round, in turn: every jitocsp BINARY given (e.g. the release binary of two
# commits), then nginx serving one of its answers as a static file (the hot-path reference of
# docs/benchmarks.md, same configuration as `jitocsp-loadtest bench`). Each side gets a 6 s
# unrecorded warm-up (every certificate asked at least once: signed, cached), then
# `wrk -t2 -c64 -d S` cycling through the certificates' GET paths (each wrk thread from its
# own offset), keep-alive. Printed per run and as medians: requests/s, and the CPU time the
# server's processes used during the run (utime + stime from /proc; nginx: its workers)
# divided by the requests answered. On a shared machine the CPU per request is steadier than
# the rate, which moves with the other load; both sides count the kernel's share of the
# loopback TCP work.
#
# --local-entries (default 100000) is JITOCSP_CACHE_LOCAL_ENTRIES: 0 measures the Redis path.
# Needs DATABASE_URL (a database of your own: an issuer is added, certificates are seeded
# and deleted after) and REDIS_URL; wrk, nginx, openssl, curl, psql, redis-cli, and
# target/release/jitocsp-loadtest (cargo build --release -p jitocsp-loadtest). Work files
# go to target/wrk-hot.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ROUNDS=3 DURATION=10 ENTRIES=100000 CERTS=20000
usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --local-entries) ENTRIES="$2"; shift ;;
        --certs) CERTS="$2"; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) break ;;
    esac
    shift
done
[ $# -ge 1 ] || usage
: "${DATABASE_URL:?DATABASE_URL must name a database of your own}" "${REDIS_URL:?}"
BINS=()
for b in "$@"; do BINS+=("$(cd "$(dirname "$b")" && pwd -P)/$(basename "$b")"); done
LOADTEST="${CARGO_TARGET_DIR:-$ROOT/target}/release/jitocsp-loadtest"
[ -x "$LOADTEST" ] || { echo "wrk-hot: $LOADTEST not found" >&2; exit 1; }

W="$ROOT/target/wrk-hot"
mkdir -p "$W/www" "$W/ngx-tmp"
ISSUER="wrkhot-$(date -u +%Y%m%dT%H%M%SZ)-$$"   # also the Redis key prefix
cleanup() {
    set +e
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    redis-cli -u "$REDIS_URL" --scan --pattern "$ISSUER*" | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null
    psql -X -q "$DATABASE_URL" -v issuer="$ISSUER" >/dev/null 2>&1 <<'SQL'
DELETE FROM certificates WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
SQL
}
trap cleanup EXIT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/ca.key" 2>/dev/null
chmod 600 "$W/ca.key"
openssl req -x509 -new -key "$W/ca.key" -subj "/CN=$ISSUER" -days 3650 -out "$W/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
"${BINS[0]}" migrate >/dev/null 2>&1
"${BINS[0]}" admin issuer add --name "$ISSUER" --cert "$W/ca.pem" --signer "file:$W/ca.key" >/dev/null 2>&1
corpus=(--issuer "$ISSUER=$W/ca.pem" --count "$CERTS" --revoked-share 0)
"$LOADTEST" seed "${corpus[@]}" --database-url "$DATABASE_URL" >/dev/null
for i in $(seq 0 $((CERTS - 1))); do "$LOADTEST" print-path "${corpus[@]}" --index "$i"; done > "$W/paths.txt"
cat > "$W/cycle.lua" <<'LUA'
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
local i = 0
function init(args) i = ((id or 0) * 7919) % #paths end
function request() i = i % #paths + 1; return wrk.format("GET", paths[i]) end
LUA
export WRK_PATHS="$W/paths.txt"

freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

# One measurement of the server on $port whose processes are $pids: "req/s us_per_request".
measure() {
    local port=$1 pids=$2 t0 t1 requests rate
    wrk -t2 -c64 -d6s -s "$W/cycle.lua" "http://127.0.0.1:$port" >/dev/null
    t0=$(ticks "$pids")
    wrk -t2 -c64 -d"${DURATION}s" -s "$W/cycle.lua" "http://127.0.0.1:$port" > "$W/wrk.out"
    t1=$(ticks "$pids")
    if grep -q "Non-2xx" "$W/wrk.out"; then echo "wrk-hot: answers that were not 200:" >&2; cat "$W/wrk.out" >&2; exit 1; fi
    requests=$(awk '/requests in/ {print $1}' "$W/wrk.out")
    rate=$(awk '/Requests\/sec/ {print $2}' "$W/wrk.out")
    python3 -c "print(f'{$rate:.0f} {($t1 - $t0) / $(getconf CLK_TCK) / $requests * 1e6:.2f}')"
}

run_jitocsp() {
    local bin=$1 port mport
    port=$(freeport); mport=$(freeport)
    JITOCSP_CACHE_LOCAL_ENTRIES=$ENTRIES JITOCSP_CACHE_KEY_PREFIX="$ISSUER" JITOCSP_SERVER_WORKERS=2 \
        "$bin" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" > "$W/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 150); do
        curl -sf "http://127.0.0.1:$mport/metrics" 2>/dev/null | grep -q 'jitocsp_listener_connected 1' && break
        sleep 0.2
    done
    [ -f "$W/www/resp.der" ] || curl -sf -o "$W/www/resp.der" "http://127.0.0.1:$port$(head -1 "$W/paths.txt")"
    measure "$port" "$pid"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

run_nginx() {
    local port workers
    port=$(freeport)
    cat > "$W/nginx.conf" <<NGINX
$([ "$(id -u)" = 0 ] && echo "user root root;")
worker_processes 2;
daemon off;
master_process on;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $W/ngx-tmp/body; proxy_temp_path $W/ngx-tmp/proxy;
    fastcgi_temp_path $W/ngx-tmp/fastcgi; uwsgi_temp_path $W/ngx-tmp/uwsgi; scgi_temp_path $W/ngx-tmp/scgi;
    sendfile on; tcp_nodelay on; keepalive_timeout 65; keepalive_requests 1000000;
    open_file_cache max=16 inactive=600s; open_file_cache_valid 600s;
    types { } default_type application/ocsp-response;
    server { listen 127.0.0.1:$port; root $W/www; location / { rewrite ^ /resp.der break; } }
}
NGINX
    nginx -p "$W" -c "$W/nginx.conf" -e "$W/nginx-error.log" & pid=$!
    for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/x" && break; sleep 0.1; done
    workers=$(pgrep -P "$pid" | tr '\n' ' ')
    measure "$port" "$workers"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
declare -A RATES CPUS
labels=()
for b in "${BINS[@]}"; do labels+=("$b"); done
labels+=(nginx)
for round in $(seq "$ROUNDS"); do
    for label in "${labels[@]}"; do
        if [ "$label" = nginx ]; then result=$(run_nginx); else result=$(run_jitocsp "$label"); fi
        read -r rate cpu <<<"$result"
        RATES[$label]+="$rate "; CPUS[$label]+="$cpu "
        printf 'round %s  %-60s %8s req/s  %6s us CPU/request  (load %s)\n' "$round" "$label" "$rate" "$cpu" "$(cut -d' ' -f1 /proc/loadavg)"
    done
done
echo "medians of $ROUNDS run(s), wrk -t2 -c64 -d${DURATION}s over $CERTS certificates, JITOCSP_CACHE_LOCAL_ENTRIES=$ENTRIES:"
nginx_rate=$(tr ' ' '\n' <<<"${RATES[nginx]}" | grep . | median)
for label in "${labels[@]}"; do
    rate=$(tr ' ' '\n' <<<"${RATES[$label]}" | grep . | median)
    cpu=$(tr ' ' '\n' <<<"${CPUS[$label]}" | grep . | median)
    printf '  %-60s %8.0f req/s  %6.2f us CPU/request  %5.2fx nginx\n' "$label" "$rate" "$cpu" \
        "$(python3 -c "print($rate / $nginx_rate)")"
done
