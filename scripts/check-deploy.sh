#!/usr/bin/env bash
# scripts/check-deploy.sh — checks the files in deploy/ with the tools that run them.
#
#   nginx -t                 deploy/nginx/jitocsp-cdn.conf (rewritten into a temp dir, as
#                            deploy/README.md shows) and deploy/nginx/tls-stapling.conf
#                            (inside a generated nginx.conf with throwaway certificates)
#   systemd-analyze verify   every deploy/systemd/*.service (ExecStart binaries that are not
#                            installed here are replaced by the built jitocsp / a stub)
#   redis-server             deploy/redis/redis.conf starts (placeholders filled) and its ACLs
#                            do what the file says
#   JSON / YAML              deploy/grafana/*.json parse and every metric they query exists in
#                            src/metrics.rs; deploy/docker/compose.yaml parses (docker compose
#                            config when available)
#
# JITOCSP_BIN: the jitocsp binary (default target/debug/jitocsp, built if missing).
# Installs nginx / systemd / redis-server via scripts/services.sh ensure-cmd when missing.
# Prints "ok: <check>" per check; exits non-zero on the first failure. Used by
# tests/operate.rs (deploy_files_pass_their_checks), so CI runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
fail() { printf 'check-deploy: FAILED: %s\n' "$*" >&2; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }

if ! command -v nginx >/dev/null || ! command -v systemd-analyze >/dev/null \
    || ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    bash scripts/services.sh ensure-cmd nginx nginx systemd-analyze systemd \
        redis-server redis-server redis-cli redis-tools
fi

BIN="${JITOCSP_BIN:-$ROOT/target/debug/jitocsp}"
if [ ! -x "$BIN" ]; then
    cargo build --quiet --bin jitocsp
fi
[ -x "$BIN" ] || fail "no jitocsp binary at $BIN"

TMP="$(mktemp -d)"
REDIS_PID=""
cleanup() {
    if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- nginx: the CDN configuration ---------------------------------------------------------
mkdir -p "$TMP/cdn/cache" "$TMP/cdn/log"
sed -e "s#/var/cache/nginx/jitocsp#$TMP/cdn/cache#g" -e "s#/var/log/nginx/jitocsp#$TMP/cdn/log/jitocsp#g" \
    -e "s#/run/nginx-jitocsp.pid#$TMP/cdn/nginx.pid#" \
    deploy/nginx/jitocsp-cdn.conf > "$TMP/cdn/nginx.conf"
out="$(nginx -t -p "$TMP/cdn/" -c "$TMP/cdn/nginx.conf" 2>&1)" || fail "nginx -t deploy/nginx/jitocsp-cdn.conf: $out"
grep -q "test is successful" <<<"$out" || fail "nginx -t deploy/nginx/jitocsp-cdn.conf: $out"
ok "nginx -t deploy/nginx/jitocsp-cdn.conf"

# --- nginx: the stapling example, inside a minimal nginx.conf -----------------------------
mkdir -p "$TMP/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=www.example.com -days 1 \
    -keyout "$TMP/tls/privkey.pem" -out "$TMP/tls/fullchain.pem" >/dev/null 2>&1 || fail "openssl req"
cp "$TMP/tls/fullchain.pem" "$TMP/tls/chain.pem"
sed -e "s#/etc/ssl/example#$TMP/tls#g" -e "s#listen 443 ssl#listen 127.0.0.1:$(free_port) ssl#" \
    deploy/nginx/tls-stapling.conf > "$TMP/tls/site.conf"
cat > "$TMP/tls/nginx.conf" <<CONF
pid $TMP/tls/nginx.pid;
error_log $TMP/tls/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $TMP/tls/t1; proxy_temp_path $TMP/tls/t2; fastcgi_temp_path $TMP/tls/t3;
    uwsgi_temp_path $TMP/tls/t4; scgi_temp_path $TMP/tls/t5;
    include $TMP/tls/site.conf;
}
CONF
out="$(nginx -t -p "$TMP/tls/" -c "$TMP/tls/nginx.conf" 2>&1)" || fail "nginx -t deploy/nginx/tls-stapling.conf: $out"
ok "nginx -t deploy/nginx/tls-stapling.conf"

# --- systemd ------------------------------------------------------------------------------
mkdir -p "$TMP/units"
for unit in deploy/systemd/*.service; do
    name="$(basename "$unit")"
    sed -e "s#/usr/local/bin/jitocsp#$BIN#g" "$unit" > "$TMP/units/$name"
done
# start-stop-daemon (ExecStop of jitocsp-cdn) lives in /sbin on Debian; nginx in /usr/sbin.
out="$(cd "$TMP/units" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify ./*.service 2>&1)" \
    || fail "systemd-analyze verify: $out"
# verify exits 0 on some problems (unknown keys are warnings): any output is a failure.
[ -z "$out" ] || fail "systemd-analyze verify: $out"
ok "systemd-analyze verify deploy/systemd/*.service"
for unit in "$TMP"/units/*.service; do
    exposure="$(systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -n1 || true)"
    printf '     %s\n' "${exposure#→ }"
done

# --- Redis --------------------------------------------------------------------------------
port="$(free_port)"
mkdir -p "$TMP/redis"
hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
sed -e "s/REPLACE_WITH_SHA256_OF_JITOCSP_PASSWORD/$(hash app-pass)/" \
    -e "s/REPLACE_WITH_SHA256_OF_OPS_PASSWORD/$(hash ops-pass)/" \
    -e "s#^dir .*#dir $TMP/redis#" -e "s/^port 6379/port $port/" -e "s/^supervised auto/supervised no/" \
    -e "s/^maxmemory 2gb/maxmemory 64mb/" \
    deploy/redis/redis.conf > "$TMP/redis/redis.conf"
redis-server "$TMP/redis/redis.conf" > "$TMP/redis/log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do
    redis-cli -p "$port" PING >/dev/null 2>&1 && break
    grep -q "NOAUTH\|PONG" < <(redis-cli -p "$port" PING 2>&1) && break
    sleep 0.1
done
rc() { redis-cli -p "$port" --no-auth-warning "$@" 2>&1; }
app() { rc --user jitocsp --pass app-pass "$@"; }
ops() { rc --user ops --pass ops-pass "$@"; }
[[ "$(rc PING)" == *NOAUTH* ]] || fail "redis: the default user must be off: $(rc PING) $(cat "$TMP/redis/log")"
[ "$(app SET ocsp:check v PX 10000)" = OK ] || fail "redis: jitocsp cannot SET ocsp:*"
[ "$(app GET ocsp:check)" = v ] || fail "redis: jitocsp cannot GET ocsp:*"
app PTTL ocsp:check | grep -Eq '^[0-9]+$' || fail "redis: jitocsp cannot PTTL ocsp:*"
[ "$(app DEL ocsp:check)" = 1 ] || fail "redis: jitocsp cannot DEL ocsp:*"
[[ "$(app SET other v)" == *NOPERM* ]] || fail "redis: jitocsp may write keys outside ocsp:*"
set -f  # KEYS * below: no globbing
for cmd in FLUSHALL KEYS\ \* CONFIG\ GET\ maxmemory; do
    # shellcheck disable=SC2086
    [[ "$(app $cmd)" == *NOPERM* ]] || fail "redis: jitocsp may run $cmd"
done
for cmd in FLUSHALL FLUSHDB KEYS\ \* CONFIG\ SET\ maxmemory\ 1 DEBUG\ SLEEP\ 0 SHUTDOWN; do
    # shellcheck disable=SC2086
    out="$(ops $cmd)"
    [[ "$out" == *NOPERM* || "$out" == *"not allowed"* ]] || fail "redis: ops may run $cmd: $out"
done
set +f
[ "$(ops CONFIG GET maxmemory-policy | tail -n1)" = allkeys-lru ] || fail "redis: eviction is not allkeys-lru"
[ "$(ops CONFIG GET maxmemory | tail -n1)" = 67108864 ] || fail "redis: maxmemory not applied"
[ "$(ops CONFIG GET save | tail -n1)" = "" ] || fail "redis: persistence is on"
ok "redis-server deploy/redis/redis.conf (ACL users, eviction, no persistence)"

# --- Grafana dashboard and compose file -----------------------------------------------------
python3 - "$ROOT" <<'PY' || fail "grafana dashboard"
import json, pathlib, re, sys
root = pathlib.Path(sys.argv[1])
names = set(re.findall(r'"(jitocsp_[a-z0-9_]+)"', (root / "src/metrics.rs").read_text()))
for board in sorted((root / "deploy/grafana").glob("*.json")):
    data = json.loads(board.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    assert exprs, f"{board}: no queries"
    for expr in exprs:
        for used in re.findall(r"jitocsp_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", used)
            assert used in names or base in names, f"{board.name}: {used} is not a metric in src/metrics.rs"
    print(f"     {board.name}: {len(data['panels'])} panels, {len(exprs)} queries")
PY
ok "grafana dashboards query only metrics that exist"
if python3 -c 'import yaml' 2>/dev/null; then
    python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert "jitocsp-1" in d["services"]' \
        deploy/docker/compose.yaml || fail "deploy/docker/compose.yaml does not parse"
    ok "yaml deploy/docker/compose.yaml"
fi
if docker compose version >/dev/null 2>&1; then
    (cd deploy/docker && POSTGRES_PASSWORD=x RESPONDER_PASSWORD=x ADMIN_PASSWORD=x REDIS_PASSWORD=x \
        docker compose config -q) || fail "docker compose config"
    ok "docker compose config deploy/docker/compose.yaml"
fi

printf 'check-deploy: all checks passed\n'
