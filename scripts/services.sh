#!/usr/bin/env bash
# Project-local Postgres and Redis for jitocsp development, demos and tests.
#
#   scripts/services.sh up           start both (idempotent), write .local/env
#   scripts/services.sh down         stop both
#   scripts/services.sh status       show what is running
#   scripts/services.sh redis-stop   stop only Redis   (tests simulate Redis outages)
#   scripts/services.sh redis-start  start only Redis
#   scripts/services.sh pg-stop      stop only Postgres (tests simulate DB outages)
#   scripts/services.sh pg-start     start only Postgres
#   scripts/services.sh pg-restart   restart the Postgres in use (tests of a database restart)
#   scripts/services.sh standby-up   a streaming standby of that Postgres (pg_basebackup),
#                                    127.0.0.1:54330, for read-replica tests (idempotent)
#   scripts/services.sh standby-stop stop the standby
#   scripts/services.sh cluster-up   a Redis Cluster of 3 primaries and 3 replicas on
#                                    127.0.0.1:7001-7006, buses 17001-17006 (idempotent: restarts missing
#                                    nodes, which rejoin; creates the cluster once)
#   scripts/services.sh cluster-down stop it and forget it
#   scripts/services.sh cluster-tls-up   the same on 127.0.0.1:7101-7106 (buses 17101-17106),
#                                    TLS only (clients, bus, replication), with the test CA
#   scripts/services.sh cluster-tls-down stop it and forget it
#   scripts/services.sh ensure-cmd CMD PACKAGE [CMD PACKAGE...]
#                                    apt-get install PACKAGE when CMD is missing
#
# Postgres: cluster in .local/pg, 127.0.0.1:54329 only, role/db jitocsp (password
# jitocsp, scram-sha-256). Tuned for tests (fsync off): the data is disposable.
# Redis: 127.0.0.1:63799, no persistence, maxmemory 256mb allkeys-lru, files in
# .local/redis. Ports can be overridden with JITOCSP_PG_PORT / JITOCSP_REDIS_PORT.
# TLS (for tests/tls.rs): a test CA and a server certificate for 127.0.0.1 and localhost in
# .local/tls (ca.pem, ca.key, server.pem, server.key), made with openssl. Postgres serves TLS
# on its own port (ssl = on, client certificates verified against ca.pem when shown); Redis
# on a second port, 127.0.0.1:63800 (JITOCSP_REDIS_TLS_PORT; tls-auth-clients optional).
# `up` turns TLS on in services already running without it (Postgres: reload; Redis: CONFIG
# SET), so neither loses its connections or data.
# Needs root (or an existing Postgres/Redis installation and a non-root user).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"
PG_PORT="${JITOCSP_PG_PORT:-54329}"
STANDBY_PORT="${JITOCSP_STANDBY_PORT:-54330}"
REDIS_PORT="${JITOCSP_REDIS_PORT:-63799}"
REDIS_TLS_PORT="${JITOCSP_REDIS_TLS_PORT:-$((REDIS_PORT + 1))}"
TLS_DIR="$LOCAL/tls" # beside the cluster: see tls_paths
REDIS_DIR="$LOCAL/redis"
REDIS_CONF="$REDIS_DIR/redis.conf"
DB_NAME=jitocsp
DB_USER=jitocsp
DB_PASS=jitocsp

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

APT_UPDATED=0
# apt_install PKG... : install Debian packages (runs `apt-get update` once per run).
apt_install() {
    is_root || die "need packages [$*] but not root; install them: sudo apt-get install -y $*"
    command -v apt-get >/dev/null || die "need packages [$*] and apt-get is not available"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# ensure_cmd CMD PKG [CMD PKG...]: install PKG for each missing CMD.
ensure_cmd() {
    local missing=()
    while [ $# -ge 2 ]; do
        command -v "$1" >/dev/null 2>&1 || missing+=("$2")
        shift 2
    done
    [ $# -eq 0 ] || die "ensure-cmd takes CMD PACKAGE pairs"
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# ---------------------------------------------------------------- Postgres

pg_bindir() {
    local d
    d="$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n1)"
    [ -n "$d" ] && dirname "$d"
}

ensure_pg_installed() {
    PGBIN="$(pg_bindir || true)"
    if [ -z "$PGBIN" ]; then
        apt_install postgresql
        PGBIN="$(pg_bindir || true)"
        [ -n "$PGBIN" ] || die "postgres installed but no initdb under /usr/lib/postgresql/*/bin"
    fi
    if is_root; then
        id postgres >/dev/null 2>&1 || die "OS user 'postgres' does not exist (is the postgresql package installed?)"
        PG_OS_USER=postgres
    else
        PG_OS_USER="$(id -un)"
    fi
}

# Run a command as the OS user owning the cluster (initdb refuses to run as root).
pg_as() {
    if is_root; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

# The data directory of the live cluster that serves PG_PORT, if any: the postmaster whose
# `-D` directory's postmaster.pid names it and the port.
pg_cluster_on_port() {
    local comm pid dir
    for comm in /proc/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = postgres ] || continue
        pid="${comm#/proc/}"
        pid="${pid%/comm}"
        dir="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n '/^-D$/{n;p;q}')" || continue
        [ -n "$dir" ] && [ -r "$dir/postmaster.pid" ] || continue
        if [ "$(sed -n 1p "$dir/postmaster.pid")" = "$pid" ] && [ "$(sed -n 4p "$dir/postmaster.pid")" = "$PG_PORT" ]; then
            readlink -f "$dir"
            return 0
        fi
    done
    return 1
}

# Decide where the cluster lives. Normally .local/pg; when the postgres user cannot
# traverse the checkout (e.g. a clone under /root, mode 700) the cluster goes to
# /var/tmp/jitocsp-pg-<hash> and .local/pg is a symlink to it. When another checkout's
# cluster (a git worktree of the same repository) already serves PG_PORT, that one is used:
# its data directory, socket and log; the worktrees share the services rather than each
# making a cluster that could not take the port.
PG_ADOPTED_LOGGED=0
pg_paths() {
    mkdir -p "$LOCAL"
    chmod 0755 "$LOCAL" 2>/dev/null || true
    local base running
    if running="$(pg_cluster_on_port)" && [ "$running" != "$(readlink -f "$LOCAL/pg")" ]; then
        PGDATA="$running"
        base="$(dirname "$PGDATA")"
        PGSOCK="$(sed -n 5p "$PGDATA/postmaster.pid")"
        PGLOG="$base/pg.log"
        if [ "$PG_ADOPTED_LOGGED" -eq 0 ]; then
            log "postgres on 127.0.0.1:$PG_PORT is the cluster in $PGDATA (another checkout's); using it"
            PG_ADOPTED_LOGGED=1
        fi
        return 0
    fi
    if [ -L "$LOCAL/pg" ]; then
        PGDATA="$(readlink -f "$LOCAL/pg")"
        base="$(dirname "$PGDATA")"
    elif pg_as test -x "$LOCAL" 2>/dev/null; then
        base="$LOCAL"
        PGDATA="$LOCAL/pg"
    else
        base="/var/tmp/jitocsp-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
        PGDATA="$base/pg"
        mkdir -p "$base"
        chmod 0755 "$base"
        ln -sfn "$PGDATA" "$LOCAL/pg"
        log "postgres user cannot reach $LOCAL; cluster lives in $PGDATA (symlinked from .local/pg)"
    fi
    PGSOCK="$base/pgsock"
    # A Unix socket path is limited to ~107 bytes.
    if [ $((${#PGSOCK} + 16)) -gt 100 ]; then
        PGSOCK="/tmp/jitocsp-pgsock-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
    fi
    PGLOG="$base/pg.log"
}

pg_ctl_() { pg_as "$PGBIN/pg_ctl" -D "$PGDATA" "$@"; }

# True if DATADIR/postmaster.pid names a live postgres process (pids are reused across
# sessions, so a leftover pid file may point at an unrelated process).
postmaster_alive() {
    local pid
    [ -f "$1/postmaster.pid" ] || return 1
    pid="$(head -n1 "$1/postmaster.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "postgres" ]
}

pg_pid_alive() { postmaster_alive "$PGDATA"; }

pg_running() {
    pg_pid_alive || return 1
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3 >/dev/null 2>&1
}

# Run a daemon-starting command with every inherited fd above 2 closed and stdin from
# /dev/null: a daemon must not keep our lock file or a caller's pipe (CI log capture,
# `| tee`) open, or the lock is never released and the caller never sees EOF.
run_detached() {
    (
        local fd
        for fd in /proc/"$BASHPID"/fd/*; do
            fd="${fd##*/}"
            if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        "$@" </dev/null
    )
}

port_in_use() {
    # bash /dev/tcp probe: succeeds if something accepts on the port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

psql_admin() {
    pg_as "$PGBIN/psql" -X -q -h "$PGSOCK" -p "$PG_PORT" -U "$PG_OS_USER" -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}

pg_init() {
    if [ -f "$PGDATA/PG_VERSION" ]; then
        return 0
    fi
    log "initdb $PGDATA"
    mkdir -p "$PGDATA"
    if is_root; then chown "$PG_OS_USER": "$PGDATA"; fi
    chmod 0700 "$PGDATA"
    local pwfile
    pwfile="$(mktemp)"
    # The superuser gets a random password; it is only used through the socket (peer auth).
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$pwfile"
    if is_root; then chown "$PG_OS_USER": "$pwfile"; fi
    pg_as "$PGBIN/initdb" -D "$PGDATA" -U "$PG_OS_USER" --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --no-locale >"$LOCAL/initdb.log" 2>&1 \
        || { rm -f "$pwfile"; cat "$LOCAL/initdb.log" >&2; die "initdb failed (log above)"; }
    rm -f "$pwfile"
    pg_as tee -a "$PGDATA/postgresql.conf" >/dev/null <<EOF

# --- jitocsp local development/test settings (scripts/services.sh) ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGSOCK'
password_encryption = 'scram-sha-256'
max_connections = 200
shared_buffers = 128MB
# disposable data: trade durability for speed
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_min_error_statement = error
EOF
}

pg_start() {
    ensure_pg_installed
    pg_paths
    pg_init
    if pg_running; then
        return 0
    fi
    if [ -f "$PGDATA/postmaster.pid" ] && ! pg_pid_alive; then
        log "removing stale $PGDATA/postmaster.pid"
        rm -f "$PGDATA/postmaster.pid"
    fi
    if ! pg_pid_alive && port_in_use "$PG_PORT"; then
        die "port $PG_PORT is already in use by another process (another checkout's cluster? stop it or set JITOCSP_PG_PORT)"
    fi
    mkdir -p "$PGSOCK"
    if is_root; then chown "$PG_OS_USER": "$PGSOCK"; fi
    touch "$PGLOG"
    if is_root; then chown "$PG_OS_USER": "$PGLOG"; fi
    log "starting postgres on 127.0.0.1:$PG_PORT (log: $PGLOG)"
    run_detached pg_ctl_ -l "$PGLOG" -w -t 60 start >/dev/null \
        || { tail -n 30 "$PGLOG" >&2; die "postgres failed to start (log tail above)"; }
    local i
    for i in $(seq 1 60); do
        "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
        sleep 0.5
        [ "$i" -lt 60 ] || die "postgres did not become ready on 127.0.0.1:$PG_PORT"
    done
}

pg_provision() {
    psql_admin -f - <<EOF
SELECT 'CREATE ROLE $DB_USER LOGIN CREATEDB CREATEROLE' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER')
\gexec
-- CREATEROLE: tests apply deploy/postgres/roles.sql (jitocsp_responder, jitocsp_admin).
ALTER ROLE $DB_USER WITH LOGIN CREATEDB CREATEROLE PASSWORD '$DB_PASS';
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB_NAME')
\gexec
EOF
    # Prove the URL the application will use actually works (TCP + scram).
    PGPASSWORD="$DB_PASS" "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$DB_NAME" \
        -tAc 'SELECT 1' >/dev/null \
        || die "cannot log in as $DB_USER@127.0.0.1:$PG_PORT/$DB_NAME with password auth"
}

pg_stop() {
    ensure_pg_installed
    pg_paths
    [ -f "$PGDATA/PG_VERSION" ] || return 0
    if pg_pid_alive; then
        log "stopping postgres"
        pg_ctl_ -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed"
    fi
}

# Stops and starts the cluster in use (this checkout's or the one it shares), as a crash-free
# restart would; clients see their connections close.
pg_restart() {
    ensure_pg_installed
    pg_paths
    pg_pid_alive || die "postgres is not running (scripts/services.sh up)"
    log "restarting postgres"
    run_detached pg_ctl_ -l "$PGLOG" -m fast -w -t 60 restart >/dev/null || die "pg_ctl restart failed"
}

# ---------------------------------------------------------------- TLS

# The test CA lives beside the cluster (in .local/tls for the checkout's own), so every
# checkout that shares the services (see pg_paths) verifies them with the one CA they serve.
tls_paths() {
    ensure_pg_installed
    pg_paths
    TLS_DIR="$(dirname "$PGDATA")/tls"
}

# True if FILE (a certificate in TLS_DIR) is issued by the test CA and not within a day of expiry.
tls_valid() {
    openssl verify -CAfile "$TLS_DIR/ca.pem" "$TLS_DIR/$1" >/dev/null 2>&1 \
        && openssl x509 -in "$TLS_DIR/$1" -noout -checkend 86400 >/dev/null 2>&1
}

# tls_issue CA_DIR OUT_DIR NAME SUBJECT EXTENSION...: OUT_DIR/NAME.key, a P-256 key, and
# OUT_DIR/NAME.pem, its certificate issued by CA_DIR/ca.pem with those extension lines.
# openssl's messages go to OUT_DIR/log.
tls_issue() {
    local ca="$1" out="$2" name="$3" subject="$4"
    shift 4
    printf '%s\n' "$@" >"$out/$name.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subject" \
        -keyout "$out/$name.key" -out "$out/$name.csr" 2>>"$out/log" \
        && openssl x509 -req -in "$out/$name.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
            -CAserial "$out/ca.srl" -days 825 -extfile "$out/$name.ext" -out "$out/$name.pem" 2>>"$out/log"
}

# The test CA and server certificate: made when missing, not verifiable, or within a day of
# expiry, and kept otherwise (so `up` changes nothing on a second run).
tls_certs() {
    ensure_cmd openssl openssl
    tls_paths
    mkdir -p "$TLS_DIR"
    if [ -f "$TLS_DIR/ca.key" ] && [ -f "$TLS_DIR/server.key" ] && tls_valid server.pem; then
        return 0
    fi
    log "making a test CA and a server certificate (127.0.0.1, localhost) in $TLS_DIR"
    local tmp
    tmp="$(mktemp -d "$TLS_DIR/new.XXXXXX")"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=jitocsp test services CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>"$tmp/log" \
        && tls_issue "$tmp" "$tmp" server /CN=localhost "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
        || { cat "$tmp/log" >&2; rm -rf "$tmp"; die "openssl failed to make the test certificates"; }
    chmod 600 "$tmp/ca.key" "$tmp/server.key"
    mv -f "$tmp/ca.key" "$tmp/ca.pem" "$tmp/server.key" "$tmp/server.pem" "$TLS_DIR/"
    rm -rf "$tmp"
}

# cluster-client.pem and .key: the certificate the TLS cluster's nodes show each other on the
# bus and replication links (a node verifies a client's certificate when shown, and
# server.pem, for serverAuth only, is refused as a client's). Made like server.pem's.
tls_cluster_client_cert() {
    tls_certs
    if [ -f "$TLS_DIR/cluster-client.key" ] && tls_valid cluster-client.pem; then
        return 0
    fi
    log "making the TLS cluster nodes' client certificate in $TLS_DIR"
    local tmp
    tmp="$(mktemp -d "$TLS_DIR/new.XXXXXX")"
    tls_issue "$TLS_DIR" "$tmp" cluster-client "/CN=jitocsp test cluster node" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" \
        || { cat "$tmp/log" >&2; rm -rf "$tmp"; die "openssl failed to make the cluster client certificate"; }
    chmod 600 "$tmp/cluster-client.key"
    mv -f "$tmp/cluster-client.key" "$tmp/cluster-client.pem" "$TLS_DIR/"
    rm -rf "$tmp"
}

pg_setting() { psql_admin -tAc "SHOW $1" 2>/dev/null || true; }

# ssl = on with the test certificates. Postgres wants its key owned by the cluster's user and
# mode 0600, so the files are copied into the data directory. Settings go through ALTER
# SYSTEM and a reload: a running cluster keeps its connections.
pg_tls() {
    local f changed=0
    for f in server.pem server.key ca.pem; do
        if ! cmp -s "$TLS_DIR/$f" "$PGDATA/jitocsp-$f" 2>/dev/null; then
            cp "$TLS_DIR/$f" "$PGDATA/jitocsp-$f"
            if is_root; then chown "$PG_OS_USER": "$PGDATA/jitocsp-$f"; fi
            chmod 600 "$PGDATA/jitocsp-$f"
            changed=1
        fi
    done
    if [ "$changed" -eq 0 ] && [ "$(pg_setting ssl)" = on ] && [ "$(pg_setting ssl_ca_file)" = jitocsp-ca.pem ]; then
        return 0
    fi
    log "postgres: ssl = on (certificates from $TLS_DIR), reloading"
    psql_admin -c "ALTER SYSTEM SET ssl = on" -c "ALTER SYSTEM SET ssl_cert_file = 'jitocsp-server.pem'" \
        -c "ALTER SYSTEM SET ssl_key_file = 'jitocsp-server.key'" -c "ALTER SYSTEM SET ssl_ca_file = 'jitocsp-ca.pem'" \
        -c "SELECT pg_reload_conf()" >/dev/null
    local i
    for i in $(seq 1 50); do
        if [ "$(PGSSLMODE=verify-full PGSSLROOTCERT="$TLS_DIR/ca.pem" PGPASSWORD="$DB_PASS" "$PGBIN/psql" -X -qtA \
            "host=localhost hostaddr=127.0.0.1 port=$PG_PORT user=$DB_USER dbname=$DB_NAME" \
            -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>/dev/null)" = t ]; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$PGLOG" >&2 || true
    die "postgres does not accept verified TLS connections on 127.0.0.1:$PG_PORT after the reload"
}

# ---------------------------------------------------------------- streaming standby
# A hot standby of the cluster above, made with pg_basebackup and fed by streaming
# replication, so tests can point `database.read_url` at a real replica and pause its replay
# (`SELECT pg_wal_replay_pause()`, granted to the test role) to make it lag, or promote it
# (`pg_promote()`, granted too) to fail over to it; `standby-up` then makes it anew.
REPL_USER=jitocsp_replicator
# The primary keeps the WAL the standby has not received yet in this slot, so a standby that
# falls behind (a test pauses it, the machine is busy) catches up instead of finding the
# segments it needs removed. max_slot_wal_keep_size bounds what a dead standby can pin.
REPL_SLOT=jitocsp_standby

standby_paths() {
    pg_paths
    SBDATA="$(dirname "$PGDATA")/standby"
    SBSOCK="${PGSOCK}-standby"
    SBLOG="$(dirname "$PGDATA")/standby.log"
}

sb_ctl() { pg_as "$PGBIN/pg_ctl" -D "$SBDATA" "$@"; }

standby_pid_alive() { postmaster_alive "$SBDATA"; }

# True once the standby is up, in recovery, and the primary is streaming to it through its
# slot (a standby that once received WAL but lost the stream is not "streaming").
standby_streaming() {
    [ "$(PGPASSWORD="$DB_PASS" "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$STANDBY_PORT" -U "$DB_USER" -d "$DB_NAME" \
        -c "SELECT pg_is_in_recovery()" 2>/dev/null)" = "t" ] \
        && [ "$(psql_admin -tA -c "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s \
                ON s.active_pid = r.pid WHERE s.slot_name = '$REPL_SLOT' AND r.state = 'streaming'" \
                2>/dev/null)" = "1" ]
}

standby_make() {
    log "pg_basebackup: new standby in $SBDATA"
    rm -rf "$SBDATA"
    mkdir -p "$SBDATA"
    if is_root; then chown "$PG_OS_USER": "$SBDATA"; fi
    chmod 0700 "$SBDATA"
    # The slot of an earlier standby goes with it (the standby is stopped: it is inactive).
    psql_admin -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
        WHERE slot_name = '$REPL_SLOT'" >/dev/null
    pg_as env PGPASSWORD="$DB_PASS" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U "$REPL_USER" \
        -D "$SBDATA" -R -C -S "$REPL_SLOT" -X stream -c fast >/dev/null 2>"$SBLOG.basebackup" \
        || { cat "$SBLOG.basebackup" >&2; die "pg_basebackup failed"; }
    pg_as tee -a "$SBDATA/postgresql.conf" >/dev/null <<EOF

# --- jitocsp test standby (scripts/services.sh standby-up) ---
port = $STANDBY_PORT
unix_socket_directories = '$SBSOCK'
hot_standby = on
# Tests pause replay for seconds; queries on the standby must not be cancelled meanwhile.
max_standby_streaming_delay = -1
hot_standby_feedback = on
EOF
}

standby_start() {
    if standby_pid_alive; then
        return 0
    fi
    rm -f "$SBDATA/postmaster.pid"
    mkdir -p "$SBSOCK"
    if is_root; then chown "$PG_OS_USER": "$SBSOCK"; fi
    touch "$SBLOG"
    if is_root; then chown "$PG_OS_USER": "$SBLOG"; fi
    if port_in_use "$STANDBY_PORT"; then die "port $STANDBY_PORT is in use (set JITOCSP_STANDBY_PORT?)"; fi
    log "starting the standby on 127.0.0.1:$STANDBY_PORT (log: $SBLOG)"
    run_detached sb_ctl -l "$SBLOG" -w -t 60 start >/dev/null \
        || { tail -n 30 "$SBLOG" >&2; return 1; }
}

standby_stop_() {
    if [ -f "$SBDATA/PG_VERSION" ] && standby_pid_alive; then
        log "stopping the standby"
        sb_ctl -m fast -w -t 60 stop >/dev/null || true
    fi
}

cmd_standby_up() {
    cmd_up
    standby_paths
    # The replication role, and the right to pause and resume replay for the test role.
    psql_admin -f - <<EOF
SELECT 'CREATE ROLE $REPL_USER REPLICATION LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$REPL_USER')
\gexec
ALTER ROLE $REPL_USER WITH REPLICATION LOGIN PASSWORD '$DB_PASS';
EOF
    if [ "$(psql_admin -tA -c "SHOW max_slot_wal_keep_size")" != "4GB" ]; then
        psql_admin -c "ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'" -c "SELECT pg_reload_conf()" >/dev/null
    fi
    # Function privileges live in each database; template1 passes them on to databases
    # created later (the tests' own).
    local db
    for db in template1 "$DB_NAME"; do
        psql_admin -d "$db" -c "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause(), pg_wal_replay_resume(), \
            pg_is_wal_replay_paused(), pg_get_wal_replay_pause_state(), pg_promote(boolean, integer) TO $DB_USER"
    done
    local attempt i
    for attempt in 1 2; do
        # A standby of an earlier cluster, one without the slot (made before it existed, or
        # whose slot was dropped), or a broken one is made anew.
        if [ ! -f "$SBDATA/standby.signal" ] || ! grep -qs "primary_slot_name = '$REPL_SLOT'" \
            "$SBDATA/postgresql.auto.conf" || [ "$attempt" -eq 2 ]; then
            standby_stop_
            standby_make
        fi
        if standby_start; then
            for i in $(seq 1 60); do
                if standby_streaming; then
                    # A test that died while replay was paused must not leave it paused.
                    PGPASSWORD="$DB_PASS" "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$STANDBY_PORT" -U "$DB_USER" \
                        -d "$DB_NAME" -c 'SELECT pg_wal_replay_resume()' >/dev/null 2>&1 || true
                    write_env
                    log "standby streaming on 127.0.0.1:$STANDBY_PORT"
                    return 0
                fi
                sleep 0.5
            done
        fi
        log "standby not streaming; making it anew"
    done
    tail -n 30 "$SBLOG" >&2 || true
    die "the standby did not start streaming"
}

cmd_standby_stop() {
    ensure_pg_installed
    standby_paths
    standby_stop_
}

# ---------------------------------------------------------------- Redis

redis_ping() {
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

redis_start() {
    ensure_cmd redis-server redis-server redis-cli redis-tools
    if redis_ping; then
        return 0
    fi
    port_in_use "$REDIS_PORT" \
        && die "port $REDIS_PORT is in use but does not answer PING (set JITOCSP_REDIS_PORT?)"
    mkdir -p "$REDIS_DIR"
    tls_certs
    cat >"$REDIS_CONF" <<EOF
# generated by scripts/services.sh; regenerated on every start
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile "$REDIS_DIR/redis.pid"
logfile "$REDIS_DIR/redis.log"
dir "$REDIS_DIR"
save ""
appendonly no
maxmemory 256mb
maxmemory-policy allkeys-lru
tls-port $REDIS_TLS_PORT
tls-cert-file "$TLS_DIR/server.pem"
tls-key-file "$TLS_DIR/server.key"
tls-ca-cert-file "$TLS_DIR/ca.pem"
tls-auth-clients optional
EOF
    rm -f "$REDIS_DIR/redis.pid"
    log "starting redis on 127.0.0.1:$REDIS_PORT (log: $REDIS_DIR/redis.log)"
    run_detached redis-server "$REDIS_CONF" >/dev/null || die "redis-server failed to start; see $REDIS_DIR/redis.log"
    local i
    for i in $(seq 1 50); do
        redis_ping && return 0
        sleep 0.2
    done
    tail -n 20 "$REDIS_DIR/redis.log" >&2 || true
    die "redis did not answer PING on 127.0.0.1:$REDIS_PORT"
}

redis_tls_ping() {
    [ "$(redis-cli --tls --cacert "$TLS_DIR/ca.pem" -h 127.0.0.1 -p "$REDIS_TLS_PORT" ping 2>/dev/null)" = "PONG" ]
}

# The TLS port on a Redis started without it (or with certificates since remade): CONFIG SET
# loads the files and opens the port without a restart.
redis_tls() {
    redis_tls_ping && return 0
    log "redis: TLS on 127.0.0.1:$REDIS_TLS_PORT (certificates from $TLS_DIR)"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config set tls-cert-file "$TLS_DIR/server.pem" \
        tls-key-file "$TLS_DIR/server.key" tls-ca-cert-file "$TLS_DIR/ca.pem" tls-auth-clients optional \
        tls-port "$REDIS_TLS_PORT" >"$REDIS_DIR/tls-config.out" 2>&1 || true
    local i
    for i in $(seq 1 25); do
        redis_tls_ping && return 0
        sleep 0.2
    done
    cat "$REDIS_DIR/tls-config.out" >&2 || true
    die "redis does not answer PING over TLS on 127.0.0.1:$REDIS_TLS_PORT"
}

redis_stop() {
    command -v redis-cli >/dev/null 2>&1 || return 0
    if redis_ping; then
        log "stopping redis"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    fi
    local i pid=""
    [ -f "$REDIS_DIR/redis.pid" ] && pid="$(cat "$REDIS_DIR/redis.pid" 2>/dev/null || true)"
    for i in $(seq 1 50); do
        if ! redis_ping && { [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; }; then
            rm -f "$REDIS_DIR/redis.pid"
            return 0
        fi
        sleep 0.1
    done
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "redis did not exit; sending SIGKILL to $pid"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$REDIS_DIR/redis.pid"
}

# ---------------------------------------------------------------- Redis Cluster
# Two clusters, each of six nodes (3 primaries, 3 replicas) with a directory per node holding
# its own nodes.conf, so a node killed by a test and started again rejoins the cluster it knew
# (as a replica if it was failed over). cluster-node-timeout 2000 ms: a dead primary's replica
# takes over within a few seconds.
#   cluster-up      plaintext, 127.0.0.1:7001-7006, in .local/redis-cluster
#   cluster-tls-up  TLS only (`port 0`; clients, the cluster bus and replication all on TLS:
#                   server.pem of the test CA, which names 127.0.0.1 and localhost, and
#                   cluster-client.pem for the nodes' own links), 127.0.0.1:7101-7106, buses
#                   17101-17106, in .local/redis-cluster-tls. Six idle nodes cost next to
#                   nothing (well under 1% of a core each), and the replicas keep
#                   `tls-replication` exercised.
# The commands below act on the cluster that cluster_use chose.

# cluster_use plain|tls: which cluster the cluster_* functions act on.
cluster_use() {
    case "$1" in
        plain)
            CLUSTER_PORT_VAR=JITOCSP_CLUSTER_BASE_PORT
            CLUSTER_BASE="${JITOCSP_CLUSTER_BASE_PORT:-7000}"
            CLUSTER_DIR="$LOCAL/redis-cluster"
            CLUSTER_TLS=0
            CLUSTER_CLI=(redis-cli -h 127.0.0.1)
            ;;
        tls)
            CLUSTER_PORT_VAR=JITOCSP_CLUSTER_TLS_BASE_PORT
            CLUSTER_BASE="${JITOCSP_CLUSTER_TLS_BASE_PORT:-7100}"
            CLUSTER_DIR="$LOCAL/redis-cluster-tls"
            CLUSTER_TLS=1
            tls_paths
            CLUSTER_CLI=(redis-cli --tls --cacert "$TLS_DIR/ca.pem" -h 127.0.0.1)
            ;;
    esac
}

cluster_ports() { seq $((CLUSTER_BASE + 1)) $((CLUSTER_BASE + 6)); }

# cluster_cli PORT ARGS...: redis-cli to 127.0.0.1:PORT of the cluster in use (TLS verified
# by the test CA for the TLS one). Bounded: redis-cli --tls waits without limit for a
# handshake that something else on the port never answers.
cluster_cli() {
    local port="$1"
    shift
    timeout 10 "${CLUSTER_CLI[@]}" -p "$port" "$@"
}

# The node's listening settings: a plain port, or TLS only.
cluster_node_listen() {
    local port="$1"
    if [ "$CLUSTER_TLS" -eq 0 ]; then
        echo "port $port"
        return 0
    fi
    # tls-auth-clients optional, as on the single TLS Redis: a client may show a certificate
    # (verified when shown); the nodes show theirs to each other.
    cat <<CONF
port 0
tls-port $port
tls-cluster yes
tls-replication yes
tls-cert-file "$TLS_DIR/server.pem"
tls-key-file "$TLS_DIR/server.key"
tls-client-cert-file "$TLS_DIR/cluster-client.pem"
tls-client-key-file "$TLS_DIR/cluster-client.key"
tls-ca-cert-file "$TLS_DIR/ca.pem"
tls-auth-clients optional
CONF
}

cluster_node_start() {
    local port="$1" dir="$CLUSTER_DIR/$1"
    if [ "$(cluster_cli "$port" ping 2>/dev/null)" = "PONG" ]; then return 0; fi
    port_in_use "$port" && die "port $port is in use but does not answer PING (set $CLUSTER_PORT_VAR?)"
    mkdir -p "$dir"
    {
        echo "# generated by scripts/services.sh; regenerated on every start"
        echo "bind 127.0.0.1"
        cluster_node_listen "$port"
        cat <<CONF
daemonize yes
pidfile "$dir/redis.pid"
logfile "$dir/redis.log"
dir "$dir"
save ""
appendonly no
maxmemory 128mb
maxmemory-policy allkeys-lru
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 2000
CONF
    } >"$dir/redis.conf"
    rm -f "$dir/redis.pid"
    run_detached redis-server "$dir/redis.conf" >/dev/null || die "redis-server on $port failed; see $dir/redis.log"
    local i
    for i in $(seq 1 50); do
        [ "$(cluster_cli "$port" ping 2>/dev/null)" = "PONG" ] && return 0
        sleep 0.1
    done
    die "cluster node $port did not answer PING; see $dir/redis.log"
}

# Every slot served, six nodes connected, three of them replicas, and every replica's link to
# its primary up (a replica that has just rejoined and not synced yet cannot take over when
# its primary dies, which is what the fault tests then make happen).
cluster_ok() {
    local nodes port
    cluster_cli $((CLUSTER_BASE + 1)) cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    nodes="$(cluster_cli $((CLUSTER_BASE + 1)) cluster nodes 2>/dev/null | grep -v fail)"
    # The flags are the third field: "slave", or "myself,slave" when the node asked is one.
    [ "$(grep -c ' connected' <<<"$nodes")" -ge 6 ] && [ "$(awk '$3 ~ /(^|,)slave(,|$)/' <<<"$nodes" | wc -l)" -ge 3 ] || return 1
    for port in $(cluster_ports); do
        if cluster_cli "$port" info replication 2>/dev/null | grep -q '^role:slave'; then
            cluster_cli "$port" info replication | grep -q '^master_link_status:up' || return 1
        fi
    done
}

cluster_up() {
    ensure_cmd redis-server redis-server redis-cli redis-tools
    local port nodes=() i
    for port in $(cluster_ports); do
        cluster_node_start "$port"
        nodes+=("127.0.0.1:$port")
    done
    if [ "$(cluster_cli $((CLUSTER_BASE + 1)) cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
        log "creating the Redis Cluster on ${nodes[*]}"
        # It waits for the nodes to meet with no deadline of its own; nodes that cannot reach
        # each other's bus (a TLS misconfiguration) would hang it.
        timeout 120 "${CLUSTER_CLI[@]}" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null \
            || die "redis-cli --cluster create failed or timed out; see $CLUSTER_DIR/*/redis.log"
    fi
    for i in $(seq 1 150); do
        if cluster_ok; then
            log "redis cluster ok on 127.0.0.1:$((CLUSTER_BASE + 1))-$((CLUSTER_BASE + 6))"
            return 0
        fi
        sleep 0.2
    done
    cluster_cli $((CLUSTER_BASE + 1)) cluster nodes >&2 || true
    die "the Redis Cluster did not reach cluster_state:ok with 6 connected nodes"
}

cluster_down() {
    local port
    for port in $(cluster_ports); do
        cluster_cli "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$CLUSTER_DIR"
}

cmd_cluster_up() { cluster_use plain; cluster_up; }
cmd_cluster_down() { cluster_use plain; cluster_down; }
cmd_cluster_tls_up() {
    tls_cluster_client_cert
    cluster_use tls
    cluster_up
}
cmd_cluster_tls_down() { cluster_use tls; cluster_down; }

# ---------------------------------------------------------------- main

write_env() {
    cat >"$LOCAL/env.tmp" <<EOF
# generated by scripts/services.sh
export DATABASE_URL=postgres://$DB_USER:$DB_PASS@127.0.0.1:$PG_PORT/$DB_NAME
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export STANDBY_DATABASE_URL=postgres://$DB_USER:$DB_PASS@127.0.0.1:$STANDBY_PORT/$DB_NAME
export JITOCSP_TEST_TLS_DIR=$TLS_DIR
export JITOCSP_TEST_REDIS_TLS_PORT=$REDIS_TLS_PORT
EOF
    mv "$LOCAL/env.tmp" "$LOCAL/env"
}

with_lock() {
    mkdir -p "$LOCAL"
    exec 9>"$LOCAL/services.lock"
    flock -w 120 9 || die "timed out waiting for another scripts/services.sh run"
    "$@"
}

cmd_up() {
    tls_certs
    redis_start
    redis_tls
    pg_start
    pg_provision
    pg_tls
    write_env
    log "ready: postgres 127.0.0.1:$PG_PORT (and TLS), redis 127.0.0.1:$REDIS_PORT (TLS on $REDIS_TLS_PORT); env in $LOCAL/env"
}

cmd_down() {
    redis_stop
    pg_stop
}

cmd_status() {
    local rc=0
    if redis_ping; then echo "redis:    running on 127.0.0.1:$REDIS_PORT"; else echo "redis:    stopped"; rc=1; fi
    ensure_pg_installed
    pg_paths
    if pg_running; then echo "postgres: running on 127.0.0.1:$PG_PORT ($PGDATA)"; else echo "postgres: stopped"; rc=1; fi
    return $rc
}

usage() {
    sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 1 ] || usage
cmd="$1"; shift
case "$cmd" in
    up)          with_lock cmd_up ;;
    down)        with_lock cmd_down ;;
    status)      cmd_status ;;
    redis-stop)  with_lock redis_stop ;;
    redis-start) with_lock redis_start ;;
    pg-stop)     with_lock pg_stop ;;
    pg-start)    with_lock pg_start ;;
    pg-restart)  with_lock pg_restart ;;
    ensure-cmd)  with_lock ensure_cmd "$@" ;;
    standby-up)  with_lock cmd_standby_up ;;
    standby-stop) with_lock cmd_standby_stop ;;
    cluster-up)  with_lock cmd_cluster_up ;;
    cluster-down) with_lock cmd_cluster_down ;;
    cluster-tls-up) with_lock cmd_cluster_tls_up ;;
    cluster-tls-down) with_lock cmd_cluster_tls_down ;;
    -h|--help|help) usage ;;
    *) printf 'services: unknown command %q\n' "$cmd" >&2; usage ;;
esac
