#!/usr/bin/env bash
# loadtest/ci-smoke.sh [DIR] — a small cache-drop in both modes, a small F_max bisection, and a
# small mass revocation, checked.
#
# Origin mode (cold Redis) and cdn mode (nginx from deploy/ in front, its cache purged by
# serial slices), 20,000 certificates, full rate 500 requests/s, 2 s per step, 5% POST and 5%
# SHA-256 CertIDs. Each run's report must have all five steps with every figure, every answer
# verified (structure, CertID echo, status as seeded, times, and signatures on a sample), and
# at least 99% success. About a minute per mode after the release build. Reports stay in DIR
# (default: a temporary directory, removed on success).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
if [ $# -ge 1 ]; then OUT="$1"; KEEP=1; else OUT="$(mktemp -d /tmp/jitocsp-ci-smoke.XXXXXX)"; KEEP=0; fi
COMMON=(--full-rate 500 --step-seconds 2 --count 20000 --post-share 0.05 --sha256-share 0.05 --connections 32
        --check --min-success 0.99)
cargo build --release -q -p jitocsp -p jitocsp-loadtest
loadtest/cache-drop.sh --mode origin --out "$OUT/origin" --no-build "${COMMON[@]}"
loadtest/cache-drop.sh --mode cdn --out "$OUT/cdn" --no-build "${COMMON[@]}"
for mode in origin cdn; do
    for f in report.json report.txt report.svg; do
        [ -s "$OUT/$mode/$f" ] || { echo "ci-smoke: $mode: $f missing" >&2; exit 1; }
    done
done
# The cdn run must actually have gone through the CDN: hits before the full purge, and
# origin traffic growing with the purged share.
python3 - "$OUT/cdn/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["steps"]
assert s[0]["cdn_hit_ratio"] > 0.5, f"cdn: first step hit ratio {s[0]['cdn_hit_ratio']}"
assert s[-1]["origin_rps"] > s[0]["origin_rps"], "cdn: the origin saw no more traffic after the full purge"
assert all(st["purge"] and st["purge"]["removed"] > 0 for st in s), "cdn: a purge removed nothing"
print(f"cdn: hit ratio {s[0]['cdn_hit_ratio']:.3f} at 1/16 -> {s[-1]['cdn_hit_ratio']:.3f} at 1; "
      f"origin {s[0]['origin_rps']:.0f} -> {s[-1]['origin_rps']:.0f} req/s")
PY
# The bisection at a toy size (two probes of 5 x 1 s, about 20 s): it must run its
# probes against fresh responders, measure nginx twice and report; whether a probe passes is
# the machine's business, not the smoke's.
loadtest/cache-drop.sh --find-max --no-build --count 20000 --step-seconds 1 --lo 500 --hi 2000 --precision 2.1 \
    --reference-seconds 1 --connections 32 --out "$OUT/find-max"
python3 - "$OUT/find-max/find-max.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["problems"] == [], r["problems"]
assert len(r["nginx_runs"]) == 2 and r["nginx_rps"] > 0, "nginx measured before and after"
assert r["probes"] and r["probes"][0]["full_rate"] == 500, r["probes"]
assert r["found"]["kind"] in ("below", "at", "at_least"), r["found"]
print(f"find-max: {len(r['probes'])} probes, found {r['found']}, nginx {r['nginx_rps']:.0f} req/s")
PY
# A mass revocation at a small size: revoke time, RSS, hot path during, the CDN hook drained,
# revoked answers verified (loadtest/README.md, "Mass revocation").
loadtest/mass-revoke.sh --count 20000 --revoke 5000 --no-build --out "$OUT/mass-revoke" \
    -- --hot 2000 --baseline-seconds 2 --drain-timeout 180
[ -s "$OUT/mass-revoke/report.json" ] || { echo "ci-smoke: mass-revoke: report.json missing" >&2; exit 1; }
echo "ci-smoke: both modes and the mass revocation passed (reports in $OUT)"
[ "$KEEP" -eq 1 ] || rm -rf "$OUT"
