#!/usr/bin/env bash
# jitocsp performance benchmark: every figure beside its reference, measured in the same run.
#
#   scripts/bench.sh [--quick] [--runs N] [--duration S] [--no-build] [--keep] [-- BENCH OPTIONS]
#
#   --quick        1 run of 3 s per figure (default: 3 runs of 10 s; medians are reported)
#   --runs N       runs per figure
#   --duration S   seconds per run
#   --no-build     use target/release/{jitocsp,jitocsp-loadtest} as they are
#   --keep         keep the work directory (logs, nginx.conf, openssl's index) and the
#                  bench issuer's certificate rows
#   after --, options for `jitocsp-loadtest bench` (`jitocsp-loadtest bench --help`), e.g.
#   --connections 64 --hot-certs 20000 --backend ring --workers 2
#
# This script prepares what the measurement needs (tools, services, a fresh P-256 CA and its
# issuer, the release binaries) and cleans up after it; `jitocsp-loadtest bench` seeds the
# certificates, starts and stops jitocsp, nginx and openssl ocsp, verifies sampled answers,
# measures and writes target/bench/report.txt and report.json. docs/benchmarks.md has the
# method. Exit status: 0 when every measurement worked (whether or not the targets were met),
# 1 when something did not work, 2 on bad usage.
#
# Environment: DATABASE_URL / REDIS_URL (default: scripts/services.sh up and .local/env).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
OUT_DIR="$ROOT/target/bench"
RUNS=3 DURATION=10 WARMUP=2 QUICK=() BUILD=1 KEEP=0
usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=(--quick); RUNS=1; DURATION=3; WARMUP=1 ;;
        --runs) [ $# -ge 2 ] || usage; RUNS="$2"; shift ;;
        --duration) [ $# -ge 2 ] || usage; DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) printf 'bench: unknown argument %q\n' "$1" >&2; usage ;;
    esac
    shift
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ && "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --runs and --duration take positive integers" >&2; exit 2; }

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

"$ROOT/scripts/services.sh" ensure-cmd nginx nginx openssl openssl psql postgresql-client redis-cli redis-tools
if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    "$ROOT/scripts/services.sh" up
    # shellcheck disable=SC1091
    . "$ROOT/.local/env"
fi
export DATABASE_URL REDIS_URL

if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release (jitocsp, jitocsp-loadtest)"
    (cd "$ROOT" && cargo build --release -q -p jitocsp -p jitocsp-loadtest) || die "cargo build --release failed"
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
for b in jitocsp jitocsp-loadtest; do [ -x "$BIN/$b" ] || die "$BIN/$b not found (run without --no-build)"; done

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
ISSUER="bench-$STAMP-$$"   # also the Redis key prefix
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/report.txt" "$OUT_DIR/report.json"   # no stale report on failure
WORK="$(mktemp -d "$OUT_DIR/work.XXXXXX")"
chmod 0755 "$WORK"
ISSUER_ADDED=""

cleanup() {
    local rc=$?
    set +e
    # The bench subcommand stops every server it started; the data is ours to remove.
    redis-cli -u "$REDIS_URL" --scan --pattern "$ISSUER*" 2>/dev/null \
        | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
    if [ "$KEEP" -eq 0 ] && [ -n "$ISSUER_ADDED" ]; then
        # Its key goes with the work directory: a responder started later on this database
        # would not be ready with a live issuer it cannot sign for.
        "$BIN/jitocsp" admin issuer retire --name "$ISSUER" >/dev/null 2>&1 \
            || log "could not retire issuer $ISSUER (retire it by hand)"
        # The certificate rows (millions) go; the issuer row stays (audit log).
        psql -X -q "$DATABASE_URL" -v ON_ERROR_STOP=1 -v issuer="$ISSUER" >/dev/null 2>&1 <<'SQL' \
            || log "could not delete the certificates of issuer $ISSUER (harmless; delete them by hand)"
DELETE FROM certificates WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
SQL
    fi
    if [ "$KEEP" -eq 0 ]; then rm -rf "$WORK"; else log "work directory kept: $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "work directory $WORK; issuer and Redis key prefix $ISSUER"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.sec1" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$WORK/ca.sec1" -out "$WORK/ca.key"
openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=jitocsp bench CA $STAMP" -days 30 -out "$WORK/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
"$BIN/jitocsp" migrate >/dev/null
"$BIN/jitocsp" admin issuer add --name "$ISSUER" --cert "$WORK/ca.pem" --signer "file:$WORK/ca.key" >/dev/null
ISSUER_ADDED=1

# Redis and Postgres do jitocsp's work: their CPU is counted as jitocsp's, not as noise.
listener_pid() {  # listener_pid URL: the process listening on the URL's port
    local port
    port="$(sed -E 's#^[a-z]+://([^@/]*@)?[^:/]*:([0-9]+).*#\2#' <<<"$1")"
    [[ "$port" =~ ^[0-9]+$ ]] && ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | sort -un | awk "NR == 1"
    return 0
}
COUNT_AS_JITOCSP=()
for url in "$REDIS_URL" "$DATABASE_URL"; do
    pid="$(listener_pid "$url")"
    [ -n "$pid" ] && COUNT_AS_JITOCSP+=(--count-as-jitocsp "$pid")
done

GIT_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV="$GIT_REV+uncommitted"

"$BIN/jitocsp-loadtest" bench --issuer "$ISSUER=$WORK/ca.pem" --ca-key "$WORK/ca.key" --jitocsp "$BIN/jitocsp" \
    --work "$WORK" --out "$OUT_DIR" --key-prefix "$ISSUER" --runs "$RUNS" --duration "$DURATION" --warmup "$WARMUP" \
    --git "$GIT_REV" "${QUICK[@]}" "${COUNT_AS_JITOCSP[@]}" "$@"
