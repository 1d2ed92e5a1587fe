#!/usr/bin/env bash
# loadtest/mass-revoke.sh — replay a mass revocation against a local jitocsp, on loopback only.
#
#   loadtest/mass-revoke.sh [--count N] [--revoke M] [--out DIR] [--no-build] [--split-cpus FLEET/DB] [-- OPTIONS]
#
#   --count N   certificates imported [100000]
#   --revoke M  certificates revoked in one `jitocsp admin revoke --serials-file` [50000]
#   --out DIR   where report.txt and report.json go [target/mass-revoke]
#   --no-build  use the existing target/release binaries
#   --split-cpus FLEET/DB  keep the database side apart from the responder's, as in production
#               (responders do not share CPUs with the primary): every Postgres process
#               (primary and standby) and `admin revoke` on the CPUs DB, the responder, the
#               load generator and Redis on FLEET (`taskset -c` lists, e.g. 0/1); all
#               Postgres and Redis processes get every CPU back at the end. Needs the machine
#               to itself: it pins every Postgres on it.
#   after --, options for `jitocsp-loadtest mass-revoke` (see its --help): --hot, --sample,
#   --connections, --baseline-seconds, --refuse-every, --drain-timeout, --reason, --workers
#
# Brings up the project-local Postgres and Redis (scripts/services.sh up) and uses a database
# of its own on them, `jitocsp_massrevoke`, makes a fresh P-256 CA added as a new issuer
# (revocations are final, so every run needs its own certificates),
# and runs `jitocsp-loadtest mass-revoke`, which seeds the certificates, starts `jitocsp serve`
# with its CDN purge hook pointed at a local stand-in CDN API, serves a hot set under load,
# revokes, and reports revoke time, responder RSS, hot-path latency before/during/after, the
# hook's calls, and verified revoked answers. At the end the run's issuer is retired (its key
# goes with the work directory) and its certificate rows and Redis keys are deleted (its
# audit rows stay: the audit log is append-only).
# Exit status: 0 when everything worked, 1 when something did not, 2 on bad usage.
# Environment: JITOCSP_LOADTEST_DATABASE_URL and JITOCSP_LOADTEST_REDIS_URL (both) use those
# services instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'mass-revoke: error: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*" >&2; }
COUNT=100000 REVOKE=50000 OUT="$ROOT/target/mass-revoke" BUILD=1 SPLIT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --count) [ $# -ge 2 ] || usage; COUNT="$2"; shift ;;
        --revoke) [ $# -ge 2 ] || usage; REVOKE="$2"; shift ;;
        --out) [ $# -ge 2 ] || usage; OUT="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --split-cpus) [ $# -ge 2 ] || usage; SPLIT="$2"; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) printf 'mass-revoke: unknown argument %q\n' "$1" >&2; usage ;;
    esac
    shift
done
[[ "$COUNT" =~ ^[1-9][0-9]*$ && "$REVOKE" =~ ^[1-9][0-9]*$ ]] || { echo "mass-revoke: --count and --revoke take positive integers" >&2; exit 2; }
[[ -z "$SPLIT" || "$SPLIT" =~ ^[0-9,-]+/[0-9,-]+$ ]] || { echo "mass-revoke: --split-cpus takes FLEET/DB CPU lists, e.g. 0/1" >&2; exit 2; }

# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
release_binaries "$BUILD"
bash scripts/services.sh ensure-cmd openssl openssl psql postgresql-client redis-cli redis-tools
loadtest_services jitocsp_massrevoke
export DATABASE_URL="$LT_DATABASE_URL"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
ISSUER="massrevoke-$STAMP-$$"   # also the Redis key prefix
mkdir -p "$OUT"
rm -f "$OUT/report.txt" "$OUT/report.json"   # no stale report on failure
WORK="$(mktemp -d /tmp/jitocsp-mass-revoke.XXXXXX)"
chmod 0700 "$WORK"
ISSUER_ADDED=""
# pin CPUS PID...: every thread of each process onto CPUS.
pin() {
    local cpus="$1" pid
    shift
    for pid in "$@"; do taskset -a -p -c "$cpus" "$pid" >/dev/null 2>&1; done
}
cleanup() {
    local rc=$?
    set +e
    if [ -n "$SPLIT" ]; then
        # shellcheck disable=SC2046
        pin "0-$(($(nproc) - 1))" $(pgrep -x postgres) $(pgrep -x redis-server)
    fi
    redis-cli -u "$REDIS_URL" --scan --pattern "$ISSUER*" 2>/dev/null \
        | xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
    if [ -n "$ISSUER_ADDED" ]; then
        "$BIN" admin issuer retire --name "$ISSUER" >/dev/null 2>&1 \
            || printf 'mass-revoke: could not retire issuer %s (retire it by hand)\n' "$ISSUER" >&2
        psql -X -q "$DATABASE_URL" -v ON_ERROR_STOP=1 -v issuer="$ISSUER" >/dev/null 2>&1 <<'SQL' \
            || printf 'mass-revoke: could not delete the certificates of issuer %s (delete them by hand)\n' "$ISSUER" >&2
DELETE FROM pending_purge_batches WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
DELETE FROM pending_purges WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
DELETE FROM cdn_purges WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
DELETE FROM certificates WHERE issuer_id = (SELECT id FROM issuers WHERE name = :'issuer');
SQL
    fi
    [ "$rc" -eq 0 ] && rm -rf "$WORK" || printf 'mass-revoke: logs kept in %s\n' "$WORK" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "database ${DATABASE_URL##*/}; issuer and Redis key prefix $ISSUER"
"$LT" create-database
"$BIN" migrate >/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.sec1" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$WORK/ca.sec1" -out "$WORK/ca.key"
chmod 0600 "$WORK/ca.key"
openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=jitocsp mass-revoke CA $STAMP" -days 30 -out "$WORK/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
"$BIN" admin issuer add --name "$ISSUER" --cert "$WORK/ca.pem" --signer "file:$WORK/ca.key" >/dev/null
ISSUER_ADDED=1

ADMIN_CPUS=() PINNED=()
if [ -n "$SPLIT" ]; then
    bash scripts/services.sh ensure-cmd taskset util-linux
    redis_port="${REDIS_URL#*://}"; redis_port="${redis_port#*@}"; redis_port="${redis_port%%/*}"; redis_port="${redis_port##*:}"
    # shellcheck disable=SC2046
    pin "${SPLIT#*/}" $(pgrep -x postgres)
    # shellcheck disable=SC2046
    pin "${SPLIT%/*}" $(pgrep -f "redis-server .*:$redis_port\b")
    ADMIN_CPUS=(--admin-cpus "${SPLIT#*/}") PINNED=(taskset -c "${SPLIT%/*}")
    step "CPUs: Postgres and admin revoke on ${SPLIT#*/}; responder, load generator and Redis (port $redis_port) on ${SPLIT%/*}"
fi

GIT_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV="$GIT_REV+uncommitted"
"${PINNED[@]}" "$LT" mass-revoke --issuer "$ISSUER=$WORK/ca.pem" --jitocsp "$BIN" --work "$WORK" --out "$OUT" \
    --key-prefix "$ISSUER" --count "$COUNT" --revoke "$REVOKE" --git "$GIT_REV" "${ADMIN_CPUS[@]}" "$@"
