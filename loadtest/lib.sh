# Sourced by loadtest/cache-drop.sh and loadtest/mass-revoke.sh, which define `step` and `die`
# and set ROOT (the checkout).

# release_binaries BUILD: sets BIN and LT to the release jitocsp and jitocsp-loadtest, built
# first when BUILD is 1.
release_binaries() {
    BIN="$ROOT/target/release/jitocsp"
    LT="$ROOT/target/release/jitocsp-loadtest"
    if [ "$1" -eq 1 ]; then
        step "cargo build --release (jitocsp, jitocsp-loadtest)"
        cargo build --release -q -p jitocsp -p jitocsp-loadtest
    fi
    [ -x "$BIN" ] && [ -x "$LT" ] || die "missing $BIN or $LT (build them, or drop --no-build)"
}

# loadtest_services DATABASE: sets LT_DATABASE_URL and exports REDIS_URL. The load test has
# a database of its own (DATABASE) on the project-local Postgres (scripts/services.sh up), so
# test data and load data never mix. JITOCSP_LOADTEST_DATABASE_URL and
# JITOCSP_LOADTEST_REDIS_URL, when both set, name services already running (one database per
# engineer on a shared machine), and none is started.
loadtest_services() {
    if [ -n "${JITOCSP_LOADTEST_DATABASE_URL:-}" ] && [ -n "${JITOCSP_LOADTEST_REDIS_URL:-}" ]; then
        LT_DATABASE_URL="$JITOCSP_LOADTEST_DATABASE_URL"
        REDIS_URL="$JITOCSP_LOADTEST_REDIS_URL"
    else
        bash "$ROOT/scripts/services.sh" up
        # shellcheck source=/dev/null
        . "$ROOT/.local/env"
        LT_DATABASE_URL="${DATABASE_URL%/*}/$1"
    fi
    export REDIS_URL
}
