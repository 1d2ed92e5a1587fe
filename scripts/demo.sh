#!/usr/bin/env bash
# scripts/demo.sh — bring up a working local jitocsp responder.
#
#   scripts/demo.sh         services + release build + demo PKI + schema + issuer + serve
#   scripts/demo.sh stop    stop the demo responder (scripts/services.sh down stops PG/Redis)
#
# What it does (every step is idempotent; re-running restarts the responder):
#   1. scripts/services.sh up   Postgres 127.0.0.1:54329, Redis 127.0.0.1:63799
#   2. cargo build --release (skip with JITOCSP_DEMO_SKIP_BUILD=1)
#   3. scripts/mkpki.sh demo/   EC P-256 "jitocsp demo CA" + leaves good/revoked/unissued
#                               (AIA OCSP http://127.0.0.1:8080/), see scripts/mkpki.sh
#   4. jitocsp migrate; admin issuer add --name demo (unless listed);
#      admin import good.pem revoked.pem; admin revoke revoked.pem (keyCompromise)
#      unissued.pem is deliberately NOT imported
#   5. jitocsp serve in the background: OCSP on 127.0.0.1:8080, metrics/health on
#      127.0.0.1:9090; log demo/serve.log, pid demo/serve.pid
#   6. checks good -> good, revoked -> revoked, unissued -> unauthorized with openssl ocsp
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEMO="$ROOT/demo"
BIN="$ROOT/target/release/jitocsp"
OCSP_ADDR="127.0.0.1:8080"
METRICS_ADDR="127.0.0.1:9090"
ISSUER=demo

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# pid of the running demo responder, or nothing
running_pid() {
    local pid cmdline
    [ -f "$DEMO/serve.pid" ] || return 0
    pid="$(cat "$DEMO/serve.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$cmdline" in
        *"jitocsp serve"*) echo "$pid" ;;
    esac
}

stop_server() {
    local pid i
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        step "stopping jitocsp serve (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            step "pid $pid did not exit after 10 s; SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$DEMO/serve.pid"
}

case "${1:-up}" in
    up) ;;
    stop) stop_server; exit 0 ;;
    -h|--help|help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown command '$1' (expected: up, stop)" ;;
esac

cd "$ROOT"

step "services"
bash scripts/services.sh ensure-cmd openssl openssl curl curl
bash scripts/services.sh up
# shellcheck source=/dev/null
. "$ROOT/.local/env"
export DATABASE_URL REDIS_URL

if [ "${JITOCSP_DEMO_SKIP_BUILD:-0}" = 1 ]; then
    step "skipping cargo build (JITOCSP_DEMO_SKIP_BUILD=1)"
else
    step "cargo build --release"
    command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
    cargo build --release || die "cargo build --release failed (output above)"
fi
[ -x "$BIN" ] || die "cargo build succeeded but $BIN is missing"

step "demo PKI in demo/"
OCSP_URL="http://$OCSP_ADDR/" KEYTYPE=ec256 bash scripts/mkpki.sh "$DEMO"

step "jitocsp migrate"
"$BIN" migrate

step "issuer '$ISSUER'"
# (capture first: `cmd | grep -q` can fail under pipefail when grep exits early)
issuers="$("$BIN" admin issuer list)"
if printf '%s\n' "$issuers" | grep -Eq "(^|[^[:alnum:]_-])$ISSUER([^[:alnum:]_-]|$)"; then
    echo "issuer '$ISSUER' already configured" >&2
else
    "$BIN" admin issuer add --name "$ISSUER" --cert "$DEMO/ca.pem" --signer "file:$DEMO/ca.key"
fi

step "import good.pem revoked.pem (unissued.pem stays unknown to the responder)"
"$BIN" admin import --issuer "$ISSUER" "$DEMO/good.pem" "$DEMO/revoked.pem"

step "revoke revoked.pem (keyCompromise)"
REVOKED_SERIAL="$(awk '$1 == "revoked" { print $2 }' "$DEMO/serials.txt")"
status="$("$BIN" admin status --issuer "$ISSUER" --serial "$REVOKED_SERIAL" 2>/dev/null || true)"
if printf '%s\n' "$status" | grep -Eq '^status:[[:space:]]+revoked'; then
    echo "already revoked" >&2
else
    "$BIN" admin revoke --issuer "$ISSUER" --cert-file "$DEMO/revoked.pem" --reason keyCompromise
fi

step "jitocsp serve"
stop_server
(
    # detach: no inherited fds (a caller's pipe would never see EOF), no stdin
    for fd in /proc/"$BASHPID"/fd/*; do
        fd="${fd##*/}"
        if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid "$BIN" serve --listen "$OCSP_ADDR" --metrics-listen "$METRICS_ADDR" \
        </dev/null >>"$DEMO/serve.log" 2>&1
) &
echo $! >"$DEMO/serve.pid"
SERVE_PID="$(cat "$DEMO/serve.pid")"
for i in $(seq 1 60); do
    if curl -fsS -o /dev/null "http://$METRICS_ADDR/healthz" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 30 "$DEMO/serve.log" >&2; die "jitocsp serve exited (log tail above, full log demo/serve.log)"; }
    [ "$i" -lt 60 ] || { tail -n 30 "$DEMO/serve.log" >&2; die "no answer from http://$METRICS_ADDR/healthz after 30 s"; }
    sleep 0.5
done
step "responder up (pid $SERVE_PID, log demo/serve.log)"

step "self-check with openssl ocsp"
check() {
    local name="$1" want="$2" out
    out="$(openssl ocsp -issuer "$DEMO/ca.pem" -cert "$DEMO/$name.pem" -url "http://$OCSP_ADDR" \
        -CAfile "$DEMO/ca.pem" -no_nonce 2>&1 || true)"
    if printf '%s\n' "$out" | grep -Eqi "^$DEMO/$name.pem: $want\$|Responder Error: $want"; then
        printf '  %-13s -> %s\n' "$name.pem" "$want" >&2
    else
        printf '%s\n' "$out" >&2
        die "$name.pem: expected '$want' from the responder (output above, log demo/serve.log)"
    fi
}
check good good
check revoked revoked
check unissued unauthorized

GOOD_B64="$(openssl ocsp -issuer "$DEMO/ca.pem" -cert "$DEMO/good.pem" -no_nonce -reqout /dev/stdout 2>/dev/null | base64 -w0)"
cat <<EOF

jitocsp demo responder is running: OCSP http://$OCSP_ADDR/, metrics http://$METRICS_ADDR/metrics

Try it:
  openssl ocsp -issuer demo/ca.pem -cert demo/good.pem -url http://$OCSP_ADDR -CAfile demo/ca.pem -resp_text
  openssl ocsp -issuer demo/ca.pem -cert demo/revoked.pem -url http://$OCSP_ADDR -CAfile demo/ca.pem
  curl -s http://$OCSP_ADDR/$GOOD_B64 -o good.der -D - && openssl ocsp -respin good.der -resp_text -noverify
  curl -s http://$METRICS_ADDR/readyz; curl -s http://$METRICS_ADDR/metrics | head
  target/release/jitocsp admin status --issuer demo --serial $(awk '$1 == "good" { print $2 }' "$DEMO/serials.txt")
  target/release/jitocsp admin revoke --issuer demo --cert-file demo/good.pem --reason superseded

Stop: scripts/demo.sh stop   (responder)   scripts/services.sh down   (Postgres, Redis)
EOF
