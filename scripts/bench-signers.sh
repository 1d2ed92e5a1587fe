#!/usr/bin/env bash
# Signing throughput on this machine, in one run (so the numbers are comparable):
#   - the PKCS#11 session pool (SoftHSM2 token, ECDSA P-256) with 1, 2, 4 and 8 sessions, next
#     to the raw C_Sign rate of the same token on 1 and 2 threads;
#   - the software signers (P-256 with ring and with p256, P-384 and RSA-2048 with ring), next
#     to `openssl speed` for the same algorithms.
#
#   scripts/bench-signers.sh [RUNS]      RUNS runs (default 3); BENCH_SECONDS per measurement (2)
#
# Needs softhsm2 and opensc (installed by scripts/softhsm.sh when missing). Report medians of
# several runs: machines here are small and noisy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
bash scripts/softhsm.sh install
RUNS="${1:-3}"
for run in $(seq 1 "$RUNS"); do
    echo "== run $run/$RUNS ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
    cargo test --release --quiet --test pkcs11 bench_signers -- --ignored --nocapture 2>/dev/null \
        | grep -E 'sig/s'
done
