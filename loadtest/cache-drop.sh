#!/usr/bin/env bash
# loadtest/cache-drop.sh — replay a CDN cache drop against a local jitocsp, on loopback only.
#
#   loadtest/cache-drop.sh --mode origin|cdn --full-rate F --step-seconds S --out DIR [options]
#   loadtest/cache-drop.sh --find-max --out DIR [options]     what drop does my origin survive?
#
# Brings up the project-local Postgres and Redis (scripts/services.sh up), a database
# `jitocsp_loadtest` on that Postgres (migrated), a P-256 test CA (kept in .local/loadtest/)
# added as an issuer, N synthetic certificates (seeded once by binary COPY and reused while
# N, share and seed are unchanged), `jitocsp serve` on free loopback ports with a fresh Redis
# key prefix (so Redis starts cold), and in cdn mode an nginx generated from
# deploy/nginx/jitocsp-cdn.conf in a temporary directory. Then runs
# `jitocsp-loadtest cache-drop` and writes DIR/report.json, DIR/report.txt, DIR/report.svg
# (plus DIR/jitocsp.log, DIR/nginx-error.log). Everything it started is stopped at the end.
#
# Options (defaults in brackets):
#   --mode origin|cdn        origin: the origin is offered F x 1/16, 1/8, 1/4, 1/2, 1;
#                            cdn: nginx gets F throughout and that share of its cache is
#                            purged at each step
#   --full-rate F            full traffic, requests/s
#   --step-seconds S         seconds per step
#   --out DIR                where the reports go
#   --count N [20000]        certificates (one issuer)
#   --revoked-share R [0.05]
#   --redis cold|warm        origin mode [cold]: warm = every certificate requested once first;
#                            cdn mode [warm]: the CDN warm-up warms Redis too; cold = its keys
#                            are unlinked after the warm-up and jitocsp runs without a local
#                            tier, so every purged URL costs the origin a signature (as after a
#                            revocation's purge, or a CDN drop together with a Redis loss)
#   --fractions LIST [1/16,1/8,1/4,1/2,1]
#   --arrival constant|poisson [constant]
#   --zipf S [1.0]  --post-share P [0]  --sha256-share P [0]  --connections C [128]
#   --threads T [1]          generator threads (each runs its own share of the arrivals)
#   --workers W [0]          JITOCSP_SERVER_WORKERS (0 = one per core)
#   --origins N [1]          run N jitocsp instances (one fleet: same database, Redis and key
#                            prefix); origin mode spreads the connections over them and reports
#                            per-origin figures, cdn mode puts them all in nginx's upstream
#   --ceiling SECONDS [0]    also measure, in the same run, nginx serving a static file of
#                            the response's size and jitocsp's hot path (closed loop), each
#                            for SECONDS; results in DIR/capacity.jsonl and DIR/report.txt
#   --cache-lock on|off [off] cdn mode: nginx's proxy_cache_lock (deploy/nginx/jitocsp-cdn.conf
#                            ships it off: concurrent misses of one key go through, and the
#                            origin's single flight coalesces them; on: nginx sends one and
#                            the others poll for it every 500 ms)
#   --check                  verify the report (every step with figures, every answer
#                            verified, success >= --min-success [0.999]); exit 1 if not
#   --no-build               use the existing target/release binaries
#
# --find-max: F_max by bisection (jitocsp-loadtest cache-drop --find-max, loadtest/README.md):
# the largest F at which every step has success >= 99.9% and p99 < 100 ms, origin mode,
# against a responder started afresh for each probe with a Redis key prefix of its own
# (cold), divided by nginx's static-file rate measured by the same generator in the same run.
# Defaults change to --count 1000000, --arrival poisson, --step-seconds 6, --threads 2;
# --full-rate, --ceiling and --origins do not apply. Results: DIR/find-max.txt and .json, and
# each probe's full report in DIR/probe-NN-F/; the responders' and nginx's logs in DIR/work/.
#   --lo F [1000]            lowest full rate tried (if it fails, F_max is below it)
#   --hi F [nginx's rate]    highest full rate considered (never tried itself)
#   --precision R [1.1]      stop when hi/lo < R
#   --reference-seconds S [5] each closed-loop nginx run (one before the probes, one after)
# Environment: JITOCSP_LOADTEST_DATABASE_URL and JITOCSP_LOADTEST_REDIS_URL (both) use those
# services instead of starting the project-local ones and the jitocsp_loadtest database.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

die() { printf 'cache-drop: error: %s\n' "$*" >&2; exit 2; }
step() { printf '==> %s\n' "$*" >&2; }
usage() { sed -n '2,56p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

MODE="" FULL_RATE="" STEP_SECONDS="" OUT=""
COUNT="" REVOKED=0.05 REDIS="" FRACTIONS="1/16,1/8,1/4,1/2,1" ARRIVAL=""
ZIPF=1.0 POST=0 SHA256=0 CONNECTIONS=128 THREADS="" WORKERS=0 CEILING=0 CHECK=0 MIN_SUCCESS=0.999 BUILD=1
CORPUS_SEED=1 ORIGINS=1 FIND_MAX=0 FIND_MAX_ARGS=() CACHE_LOCK=off
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE="$2"; shift 2 ;;
        --full-rate) FULL_RATE="$2"; shift 2 ;;
        --step-seconds) STEP_SECONDS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --count) COUNT="$2"; shift 2 ;;
        --revoked-share) REVOKED="$2"; shift 2 ;;
        --redis) REDIS="$2"; shift 2 ;;
        --fractions) FRACTIONS="$2"; shift 2 ;;
        --arrival) ARRIVAL="$2"; shift 2 ;;
        --zipf) ZIPF="$2"; shift 2 ;;
        --post-share) POST="$2"; shift 2 ;;
        --sha256-share) SHA256="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --origins) ORIGINS="$2"; shift 2 ;;
        --ceiling) CEILING="$2"; shift 2 ;;
        --cache-lock) CACHE_LOCK="$2"; shift 2 ;;
        --check) CHECK=1; shift ;;
        --min-success) MIN_SUCCESS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --find-max) FIND_MAX=1; shift ;;
        --lo|--hi|--precision|--reference-seconds) FIND_MAX_ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [ "$FIND_MAX" -eq 1 ]; then
    [ -z "$MODE" ] || [ "$MODE" = origin ] || die "--find-max measures an origin (--mode origin)"
    MODE=origin
    [ -z "$FULL_RATE" ] || die "--find-max chooses the full rates itself: no --full-rate"
    [ "$CEILING" = 0 ] && [ "$ORIGINS" = 1 ] && [ -z "$REDIS" ] && [ "$CHECK" -eq 0 ] \
        || die "--ceiling, --origins, --redis and --check do not apply to --find-max"
    COUNT="${COUNT:-1000000}" ARRIVAL="${ARRIVAL:-poisson}" STEP_SECONDS="${STEP_SECONDS:-6}" THREADS="${THREADS:-2}"
else
    [ ${#FIND_MAX_ARGS[@]} -eq 0 ] || die "--lo, --hi, --precision and --reference-seconds need --find-max"
    [ -n "$FULL_RATE" ] || die "--full-rate F is required"
    [ -n "$STEP_SECONDS" ] || die "--step-seconds S is required"
fi
COUNT="${COUNT:-20000}" ARRIVAL="${ARRIVAL:-constant}" THREADS="${THREADS:-1}"
case "$MODE" in origin|cdn) ;; *) die "--mode origin|cdn is required" ;; esac
[ -n "$OUT" ] || die "--out DIR is required"
if [ "$MODE" = cdn ]; then REDIS="${REDIS:-warm}"; else REDIS="${REDIS:-cold}"; fi
case "$REDIS" in cold|warm) ;; *) die "--redis cold|warm" ;; esac
case "$CACHE_LOCK" in on|off) ;; *) die "--cache-lock on|off" ;; esac
[[ "$ORIGINS" =~ ^[1-9][0-9]?$ ]] || die "--origins takes 1 to 99"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd -P)"

# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
release_binaries "$BUILD"

step "services"
bash scripts/services.sh ensure-cmd openssl openssl curl curl python3 python3 nginx nginx
loadtest_services jitocsp_loadtest

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /tmp/jitocsp-loadtest.XXXXXX)"
chmod 0755 "$WORK"
PREFIX="lt$(date +%s)$$"
SERVE_PIDS=()
NGINX_CONF=""
cleanup() {
    local rc=$? pid
    for pid in "${SERVE_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$NGINX_CONF" ] && [ -f "$WORK/nginx.pid" ]; then
        nginx -c "$NGINX_CONF" -s quit 2>/dev/null || kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -f "$WORK/nginx.pid" ] || break; sleep 0.1; done
    fi
    [ -f "$WORK/log/jitocsp-error.log" ] && cp "$WORK/log/jitocsp-error.log" "$OUT/nginx-error.log" 2>/dev/null
    # This run's Redis keys (its own prefix, and --find-max's PREFIX-pN) are dropped; nothing
    # else is touched.
    for pattern in "$PREFIX:*" "$PREFIX-*:*"; do
        redis-cli -u "$REDIS_URL" --scan --pattern "$pattern" 2>/dev/null \
            | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "database ${LT_DATABASE_URL##*/}"
DATABASE_URL="$LT_DATABASE_URL" "$LT" create-database
DATABASE_URL="$LT_DATABASE_URL" "$BIN" migrate >/dev/null

STATE="$ROOT/.local/loadtest"
mkdir -p "$STATE"
if [ ! -f "$STATE/ca.pem" ]; then
    step "test CA in $STATE"
    openssl ecparam -name prime256v1 -genkey -noout -out "$STATE/ca.sec1" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$STATE/ca.sec1" -out "$STATE/ca.key"
    openssl req -x509 -new -key "$STATE/ca.key" -subj "/CN=jitocsp loadtest CA" -days 3650 -out "$STATE/ca.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature
    rm -f "$STATE/seeded"
fi
ISSUER="loadtest-$(openssl x509 -in "$STATE/ca.pem" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | cut -c1-12 | tr A-F a-f)"
# Captured first: under pipefail, `list | grep -q` fails when grep exits before the list is
# written out (the list grows with every bench run's issuer).
ISSUERS="$(DATABASE_URL="$LT_DATABASE_URL" "$BIN" admin issuer list)"
if ! grep -qw "$ISSUER" <<<"$ISSUERS"; then
    DATABASE_URL="$LT_DATABASE_URL" "$BIN" admin issuer add --name "$ISSUER" --cert "$STATE/ca.pem" \
        --signer "file:$STATE/ca.key" >/dev/null
    rm -f "$STATE/seeded"
fi
CORPUS=(--issuer "$ISSUER=$STATE/ca.pem" --count "$COUNT" --revoked-share "$REVOKED" --corpus-seed "$CORPUS_SEED")
STAMP="$ISSUER $COUNT $REVOKED $CORPUS_SEED"
if [ "$(cat "$STATE/seeded" 2>/dev/null)" = "$STAMP" ]; then
    SEED_MODE=(--replace --skip-if-same-count)
else
    SEED_MODE=(--replace)
fi
step "seed $COUNT certificates for $ISSUER"
DATABASE_URL="$LT_DATABASE_URL" "$LT" seed "${CORPUS[@]}" "${SEED_MODE[@]}"
echo "$STAMP" >"$STATE/seeded"

if [ "$FIND_MAX" -eq 1 ]; then
    # The subcommand starts (and restarts) the responders and nginx itself.
    step "cache-drop --find-max: $COUNT certificates, $STEP_SECONDS s steps, $ARRIVAL arrivals"
    "$LT" cache-drop --find-max --mode origin "${CORPUS[@]}" --connections "$CONNECTIONS" --threads "$THREADS" \
        --zipf "$ZIPF" --post-share "$POST" --sha256-share "$SHA256" --step-seconds "$STEP_SECONDS" \
        --fractions "$FRACTIONS" --arrival "$ARRIVAL" --out "$OUT" --jitocsp "$BIN" --work "$OUT/work" \
        --database-url "$LT_DATABASE_URL" --redis-url "$REDIS_URL" --key-prefix "$PREFIX" --workers "$WORKERS" \
        "${FIND_MAX_ARGS[@]}"
    exit 0
fi

OCSP_PORTS=() METRICS_PORTS=() TARGETS=() METRICS=()
# A cold Redis behind the CDN is cold in the responders too: no local tier to answer from.
LOCAL_TIER=()
[ "$MODE $REDIS" = "cdn cold" ] && LOCAL_TIER=(JITOCSP_CACHE_LOCAL_ENTRIES=0)
for n in $(seq 1 "$ORIGINS"); do
    OCSP_PORT="$(free_port)"
    METRICS_PORT="$(free_port)"
    log_file="$OUT/jitocsp.log"
    [ "$ORIGINS" -eq 1 ] || log_file="$OUT/jitocsp-$n.log"
    step "jitocsp serve on 127.0.0.1:$OCSP_PORT (metrics $METRICS_PORT), Redis key prefix $PREFIX (cold)"
    DATABASE_URL="$LT_DATABASE_URL" JITOCSP_CACHE_KEY_PREFIX="$PREFIX" JITOCSP_SERVER_WORKERS="$WORKERS" \
        env "${LOCAL_TIER[@]}" \
        "$BIN" serve --listen "127.0.0.1:$OCSP_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
        </dev/null >"$log_file" 2>&1 &
    SERVE_PIDS+=($!)
    for i in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/readyz")" = 200 ] && break
        kill -0 "${SERVE_PIDS[-1]}" 2>/dev/null || { tail -n 20 "$log_file" >&2; die "jitocsp serve exited"; }
        sleep 0.2
        [ "$i" -lt 100 ] || { tail -n 20 "$log_file" >&2; die "jitocsp not ready after 20 s"; }
    done
    OCSP_PORTS+=("$OCSP_PORT") METRICS_PORTS+=("$METRICS_PORT")
    TARGETS+=(--target "http://127.0.0.1:$OCSP_PORT") METRICS+=(--metrics "http://127.0.0.1:$METRICS_PORT")
done
# The first instance: the static reference's source and the ceiling's subject.
OCSP_PORT="${OCSP_PORTS[0]}" METRICS_PORT="${METRICS_PORTS[0]}"

CDN_PORT="" STATIC_PORT="" STATIC_LEN=""
if [ "$MODE" = cdn ] || [ "$CEILING" != 0 ]; then
    CDN_PORT="$(free_port)"
    STATIC_PORT="$(free_port)"
    mkdir -p "$WORK/cache" "$WORK/log" "$WORK/static"
    # The static reference: a real response of this corpus, byte for byte.
    STATIC_PATH="$("$LT" print-path "${CORPUS[@]}" --index 0)"
    curl -sS -o "$WORK/static/response.der" "http://127.0.0.1:$OCSP_PORT$STATIC_PATH"
    STATIC_LEN="$(stat -c %s "$WORK/static/response.der")"
    [ "$STATIC_LEN" -gt 100 ] || die "could not fetch a response for the static reference"
    chmod -R a+rX "$WORK/static"
    # nginx started as root runs its workers as `nobody`: they write the cache.
    if [ "$(id -u)" -eq 0 ]; then chown -R nobody "$WORK/cache"; fi
    NGINX_CONF="$WORK/nginx.conf"
    sed -e "s#/var/cache/nginx/jitocsp#$WORK/cache#g" -e "s#/var/log/nginx/jitocsp#$WORK/log/jitocsp#g" \
        -e "s#/run/nginx-jitocsp.pid#$WORK/nginx.pid#" -e "s#127.0.0.1:8081#127.0.0.1:$CDN_PORT#" \
        -E -e "s#proxy_cache_lock (on|off);#proxy_cache_lock $CACHE_LOCK;#" \
        deploy/nginx/jitocsp-cdn.conf >"$NGINX_CONF.origins"
    # The rewrite above matches a literal line: if the shipped config changes, fail rather than
    # measure the shipped setting under the other's name.
    grep -q "proxy_cache_lock $CACHE_LOCK;" "$NGINX_CONF.origins" \
        || die "deploy/nginx/jitocsp-cdn.conf has no 'proxy_cache_lock on|off;' line for --cache-lock to set"
    # Every instance in the upstream, in place of the example's one.
    upstream=""
    for port in "${OCSP_PORTS[@]}"; do
        upstream+="        server 127.0.0.1:$port max_fails=3 fail_timeout=10s;\n"
    done
    awk -v servers="$upstream" '/server 127\.0\.0\.1:8080 /{ printf "%s", servers; next } { print }' \
        "$NGINX_CONF.origins" >"$NGINX_CONF.in"
    # A second server block (inside `http`, i.e. before the file's last `}`): the static file.
    last="$(grep -n '^}' "$NGINX_CONF.in" | tail -n1 | cut -d: -f1)"
    {
        head -n $((last - 1)) "$NGINX_CONF.in"
        cat <<EOF
    # Added by loadtest/cache-drop.sh: the machine's ceiling, a static file of a response's size.
    server {
        listen 127.0.0.1:$STATIC_PORT reuseport;
        access_log off;
        root $WORK/static;
        location / { default_type application/ocsp-response; }
    }
EOF
        tail -n +"$last" "$NGINX_CONF.in"
    } >"$NGINX_CONF"
    nginx -t -q -c "$NGINX_CONF" || die "generated nginx config does not pass nginx -t"
    nginx -c "$NGINX_CONF"
    for _ in $(seq 1 50); do [ -f "$WORK/nginx.pid" ] && break; sleep 0.1; done
    LEVELS="$(grep -o 'levels=[0-9:]*' "$NGINX_CONF" | head -n1 | cut -d= -f2)"
    step "nginx CDN on 127.0.0.1:$CDN_PORT (cache $WORK/cache/cache, levels $LEVELS), static on $STATIC_PORT ($STATIC_LEN bytes)"
fi

LOAD=(--connections "$CONNECTIONS" --threads "$THREADS" --zipf "$ZIPF" --post-share "$POST"
      --sha256-share "$SHA256" "${METRICS[@]}")
RUN=("$LT" cache-drop "${CORPUS[@]}" "${LOAD[@]}" --mode "$MODE" --full-rate "$FULL_RATE"
     --step-seconds "$STEP_SECONDS" --fractions "$FRACTIONS" --arrival "$ARRIVAL" --out "$OUT")
# Whose CPU is whose in each step's breakdown: the responders, and (through DATABASE_URL and
# REDIS_URL) the Postgres backends and the Redis they use.
for pid in "${SERVE_PIDS[@]}"; do RUN+=(--responder-pid "$pid"); done
if [ "$MODE" = cdn ]; then
    RUN+=(--target "http://127.0.0.1:$CDN_PORT" --nginx-cache-dir "$WORK/cache/cache" --nginx-levels "$LEVELS")
    if [ "$REDIS" = cold ]; then
        RUN+=(--unlink-after-warm --redis-url "$REDIS_URL" --key-prefix "$PREFIX"
              --redis-label "cold (unlinked after the CDN warm-up; no local tier)")
    else
        RUN+=(--redis-label "warm (from the CDN warm-up)")
    fi
else
    RUN+=("${TARGETS[@]}" --redis-label "$REDIS")
    [ "$REDIS" = warm ] && RUN+=(--warm)
fi
step "cache-drop: mode $MODE, full rate $FULL_RATE req/s, $STEP_SECONDS s per step"
DATABASE_URL="$LT_DATABASE_URL" "${RUN[@]}"

if [ "$CEILING" != 0 ]; then
    step "ceiling: nginx static file ($STATIC_LEN bytes) and jitocsp hot path, $CEILING s each, closed loop"
    "$LT" capacity "${CORPUS[@]}" --target "http://127.0.0.1:$STATIC_PORT" --connections 64 --threads "$THREADS" \
        --seconds "$CEILING" --static-path /response.der --static-len "$STATIC_LEN" --label "nginx static file" \
        --out "$OUT/capacity.jsonl" | tee -a "$OUT/report.txt"
    "$LT" capacity "${CORPUS[@]}" --target "http://127.0.0.1:$OCSP_PORT" --connections 64 --threads "$THREADS" \
        --metrics "http://127.0.0.1:$METRICS_PORT" --seconds "$CEILING" --hot-set 1000 --verify-every 1000 \
        --label "jitocsp hot path (Redis, local tier off)" --out "$OUT/capacity.jsonl" | tee -a "$OUT/report.txt"
fi

if [ "$CHECK" -eq 1 ]; then
    steps="$(awk -F, '{print NF}' <<<"$FRACTIONS")"
    "$LT" check-report "$OUT/report.json" --steps "$steps" --min-success "$MIN_SUCCESS"
fi
