#!/usr/bin/env bash
# scripts/test.sh — the one command that runs every test.
#   1. starts project-local Postgres + Redis (scripts/services.sh up) and loads .local/env
#   2. installs missing tools: openssl, curl (apt), python cryptography + pkilint (pip)
#   3. cargo fmt --check, cargo clippy -D warnings, cargo doc -D warnings, cargo deny (fail fast)
#   4. self-test of the external OCSP judge (tests/judges/selftest.py)
#   5. cargo test --workspace --all-targets -- --test-threads=2 (tests/operate.rs also runs
#      scripts/check-deploy.sh: nginx -t, systemd-analyze verify, redis.conf)
#   6. loadtest/ci-smoke.sh: a short cache-drop in origin and cdn modes (skipped when
#      arguments filter the tests)
# Tests receive DATABASE_URL and REDIS_URL (tests/common: the services),
# JITOCSP_TEST_STANDBY_URL (the test database on a streaming standby, tests/revocation_truth.rs),
# JITOCSP_TEST_REDIS_CLUSTER (seed nodes of a Redis Cluster, tests/redis_cluster.rs),
# JITOCSP_TEST_REDIS_CLUSTER_TLS (seed nodes of a Redis Cluster speaking only TLS, tests/tls.rs),
# JITOCSP_TEST_JUDGE and JITOCSP_TEST_PYTHON (tests/common::judge runs that judge.py with that
# Python, the one pkilint and cryptography were installed for; a bare `cargo test` falls back
# to python3 and tests/judges/judge.py) and JITOCSP_ROOT. They also receive
# JITOCSP_TEST_REQUIRE_ALL=1: a test whose environment is missing (tests/common/skip.rs), which a
# bare `cargo test` skips, fails here instead. The open-files limit is raised for the 10,000-
# connection burst test, which therefore fails (never skips) below it. Extra arguments go to
# `cargo test` after `--` (e.g. scripts/test.sh revoke_ to filter). Services are left running;
# stop them with scripts/services.sh down.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

# tests/resilience.rs holds 10,000 client sockets, and the server it starts (which inherits
# this limit) as many again.
NOFILE_NEEDED=11024 # what the test asserts: 10,000 + 1,024
hard="$(ulimit -Hn)"
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge "$NOFILE_NEEDED" ] \
    || die "open-files limit is $(ulimit -n) (hard $hard); the tests need $NOFILE_NEEDED: raise the hard limit (ulimit -Hn, limits.conf)"

step "services"
bash scripts/services.sh ensure-cmd openssl openssl curl curl python3 python3 psql postgresql-client \
    nginx nginx systemd-analyze systemd
# Tests run in parallel; install what they use before any of them starts.
bash scripts/softhsm.sh install
bash scripts/services.sh up
# A streaming standby of that Postgres, for the read-replica tests (tests/revocation_truth.rs).
bash scripts/services.sh standby-up
# A Redis Cluster (3 primaries, 3 replicas), for tests/redis_cluster.rs.
bash scripts/services.sh cluster-up
# The same speaking only TLS (the test CA of `up`), for tests/tls.rs.
bash scripts/services.sh cluster-tls-up
# shellcheck source=/dev/null
. "$ROOT/.local/env"
# Tests get a database and a Redis DB of their own, emptied at every run, so that a run on a
# long-lived checkout sees what CI sees (and the demo's data is left alone).
psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 \
    -c 'DROP DATABASE IF EXISTS jitocsp_test WITH (FORCE)' -c 'CREATE DATABASE jitocsp_test'
DATABASE_URL="${DATABASE_URL%/*}/jitocsp_test"
JITOCSP_TEST_STANDBY_URL="${STANDBY_DATABASE_URL%/*}/jitocsp_test"
REDIS_URL="${REDIS_URL%/}/1"
redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
JITOCSP_TEST_REDIS_CLUSTER=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
JITOCSP_TEST_REDIS_CLUSTER_TLS=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
export DATABASE_URL REDIS_URL JITOCSP_TEST_STANDBY_URL JITOCSP_TEST_REDIS_CLUSTER JITOCSP_TEST_REDIS_CLUSTER_TLS
export JITOCSP_ROOT="$ROOT"
# Everything above is provided, so no test may skip for want of it.
export JITOCSP_TEST_REQUIRE_ALL=1
export JITOCSP_TEST_JUDGE="$ROOT/tests/judges/judge.py"

step "python dependencies"
PYTHON="${PYTHON:-$(command -v python3)}"
if ! "$PYTHON" -c 'import cryptography, pkilint' >/dev/null 2>&1; then
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        bash scripts/services.sh ensure-cmd pip3 python3-pip
    fi
    "$PYTHON" -m pip install -q pkilint cryptography \
        || "$PYTHON" -m pip install -q --break-system-packages pkilint cryptography \
        || die "cannot pip install pkilint cryptography for $PYTHON"
    "$PYTHON" -c 'import cryptography, pkilint' || die "pkilint/cryptography still not importable by $PYTHON"
fi
export JITOCSP_TEST_PYTHON="$PYTHON"
[ -f "$JITOCSP_TEST_JUDGE" ] || die "the judge $JITOCSP_TEST_JUDGE is missing"
"$PYTHON" -c 'import cryptography, pkilint; from importlib.metadata import version as v; print("cryptography", v("cryptography"), "pkilint", v("pkilint"))'

command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (the lib.rs map's links resolve)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cargo deny (deny.toml: licenses, bans, sources; advisories when the database is at hand)"
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2
# cargo-deny reads the metadata of every platform's dependencies (web-sys, android_*), which a
# build on this host never downloads: fetch them first, or a fresh machine fails here.
cargo fetch --locked
cargo deny --offline check licenses bans sources
# The RustSec database is fetched from github.com; on a machine that cannot reach it the last
# copy fetched is used, and without any copy the check is reported as not done.
timeout 60 cargo deny fetch db >/dev/null 2>&1 || true
advisory_db="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-* 2>/dev/null | head -n 1 || true)"
if [ -n "$advisory_db" ]; then
    echo "advisory database: $(git -C "$advisory_db" log -1 --format='%h of %cs' 2>/dev/null || echo "$advisory_db")" >&2
    cargo deny --offline check advisories
else
    echo "advisories: NOT CHECKED (the RustSec database could not be fetched from github.com)" >&2
fi

step "judge self-test"
"$PYTHON" tests/judges/selftest.py

step "cargo test"
rc=0 failed=""
cargo test --workspace --all-targets -- --test-threads=2 "$@" || { rc=$?; failed="cargo test"; }

if [ "$rc" -eq 0 ] && [ "$#" -eq 0 ]; then
    step "cache-drop smoke run (origin and cdn modes)"
    bash loadtest/ci-smoke.sh || { rc=$?; failed="the smoke run (loadtest/ci-smoke.sh)"; }
fi
if [ "$rc" -eq 0 ]; then
    step "all tests passed"
else
    step "$failed failed (exit $rc)"
fi
exit "$rc"
