#!/usr/bin/env python3
"""Turn the raw results of scripts/bench.sh into the report table and JSON.

  report.py RESULTS REPORT.txt REPORT.json

RESULTS has one record per line: "run key=value ..." (one wrk run, with jitocsp metric deltas
as m_*), "speed threads=N rate=R impl=I", "meta key=value ...", "failed TEXT". Prints the
table, writes it and the JSON, and exits 1 if any run shows something that did not work
(errors, non-successful OCSP answers, a cold run that was not cold, a hot run that was not
hot, responses of the wrong size, an exhausted serial list). Missing a target is not a failure.
"""

import json
import statistics
import sys

TARGETS = {  # PERFORMANCE.md
    "hot": 0.7,
    "hot-local": 1.0,
    "cold": 1.5,
    "signatures": 0.6,
}


def kv(tokens):
    out = {}
    for t in tokens:
        if "=" in t:
            k, v = t.split("=", 1)
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def fmt_rate(x):
    return "-" if x is None else f"{x:,.0f}"


def main() -> int:
    results, out_txt, out_json = sys.argv[1:4]
    runs, speeds, meta, failed = [], [], {}, []
    with open(results) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            kind, _, rest = line.partition(" ")
            if kind == "run":
                runs.append(kv(rest.split()))
            elif kind == "speed":
                speeds.append(kv(rest.split()))
            elif kind == "meta":
                meta.update(kv(rest.split()))
            elif kind == "failed":
                failed.append(rest)

    problems = list(failed)
    warnings = []
    conns = meta.get("connections", 64)

    # ---- per-run checks
    for r in runs:
        tag = f"{r['figure']} {r['name']} run {r['run']}"
        errs = {k: r[k] for k in ("connect", "read", "write", "timeout", "status") if r.get(k)}
        r["errors"] = sum(errs.values())
        if errs:
            problems.append(f"{tag}: wrk saw errors {errs} ('status' = non-2xx/3xx responses)")
        if r.get("exhausted"):
            problems.append(f"{tag}: the serial list ran out (raise JITOCSP_BENCH_*_MAX_RATE); the run is invalid")
        if r.get("other_cpu_pct", 0) > 10:
            warnings.append(
                f"{tag}: processes other than wrk, the server (and for jitocsp Redis and Postgres) used {r['other_cpu_pct']:.0f}% of the CPU during the run "
                f"(noise: compare with the reference's runs, or re-run on a quiet machine)"
            )
        if r["requests"] == 0:
            problems.append(f"{tag}: no requests completed")
            continue
        r["bytes_per_response"] = r["bytes"] / r["requests"]
        expected = {
            ("hot", "jitocsp"): meta.get("jitocsp_response_bytes"),
            ("hot-local", "jitocsp"): meta.get("jitocsp_response_bytes"),
            ("hot", "nginx"): meta.get("nginx_response_bytes"),
            ("hot-local", "nginx"): meta.get("nginx_response_bytes"),
            ("cold", "jitocsp"): meta.get("cold_response_bytes"),
            ("cold", "openssl-ocsp"): meta.get("openssl_response_bytes"),
        }.get((r["figure"], r["name"]))
        if expected and abs(r["bytes_per_response"] - expected) > 0.1 * expected:
            problems.append(
                f"{tag}: {r['bytes_per_response']:.0f} bytes per response on average, a correct answer "
                f"weighs {expected} (some answers were not what was verified)"
            )
        if r["name"] == "jitocsp":
            req = r["requests"]
            if r.get("m_ocsp_all", 0) != r.get("m_ocsp_ok", 0):
                problems.append(
                    f"{tag}: {r['m_ocsp_all'] - r['m_ocsp_ok']} OCSP answers were not 'successful' "
                    f"(tryLater/internalError...; signer overloaded {r.get('m_overloaded', 0)}, "
                    f"redis errors {r.get('m_redis_errors', 0)}, db errors {r.get('m_db_errors', 0)})"
                )
            if r["figure"].startswith("hot") and (r.get("m_signatures", 0) > 0.01 * req or r.get("m_db_reads", 0) > 0.01 * req):
                problems.append(
                    f"{tag}: not a hot run: {r.get('m_signatures')} signatures and {r.get('m_db_reads')} "
                    f"Postgres reads for {req} requests"
                )
            if r["figure"] == "hot-local" and r.get("m_local_hit", 0) < 0.99 * req:
                warnings.append(f"{tag}: only {r.get('m_local_hit', 0)} of {req} requests were local-tier hits")
            if r["figure"] == "hot" and r.get("m_redis_hit", 0) < 0.99 * req:
                warnings.append(f"{tag}: only {r.get('m_redis_hit', 0)} of {req} requests were Redis hits")
            if r["figure"] == "cold":
                sig = r.get("m_signatures", 0)
                # The server may finish up to one in-flight request per connection after wrk stops.
                if sig < 0.99 * req - conns:
                    problems.append(f"{tag}: not a cold run: {sig} signatures for {req} requests")
                r["signatures_per_s"] = sig / (r["duration_us"] / 1e6)

    # ---- figures
    def rates(fig, name):
        return {r["run"]: r["rps"] for r in runs if r["figure"] == fig and r["name"] == name}

    figures = []
    for fig, label, ref_name, ref_label in (
        ("hot", "hot: Redis hit, local tier off (keep-alive)", "nginx", "nginx, static file of the same size"),
        ("hot-local", "hot: local tier on (keep-alive)", "nginx", "nginx, static file of the same size"),
        ("cold", "cold: new serial per request (Connection: close)", "openssl-ocsp", "openssl ocsp -index -multi 2"),
    ):
        s, ref = rates(fig, "jitocsp"), rates(fig, ref_name)
        ms, mr = med(list(s.values())), med(list(ref.values()))
        paired = [s[k] / ref[k] for k in sorted(s) if k in ref and ref[k]]
        figures.append(
            {
                "figure": fig,
                "label": label,
                "unit": "req/s",
                "subject": "jitocsp",
                "subject_runs": [s[k] for k in sorted(s)],
                "subject_median": ms,
                "reference": ref_label,
                "reference_runs": [ref[k] for k in sorted(ref)],
                "reference_median": mr,
                "ratio": (ms / mr) if ms and mr else None,
                "paired_ratios": paired,
                "target": TARGETS[fig],
            }
        )

    sig_runs = [r["signatures_per_s"] for r in sorted(runs, key=lambda r: r["run"]) if r.get("signatures_per_s") is not None and r["figure"] == "cold"]
    speed = {(s["impl"], s["threads"]): s["rate"] for s in speeds}
    backend = meta.get("backend", "p256")
    p256_2 = speed.get((backend, 2))
    ms = med(sig_runs)
    figures.append(
        {
            "figure": "signatures",
            "label": "cold: signatures/s (jitocsp_signatures_total)",
            "unit": "sign/s",
            "subject": "jitocsp",
            "subject_runs": sig_runs,
            "subject_median": ms,
            "reference": f"{backend} raw rate, 2 threads (backend in use)",
            "reference_runs": [p256_2] if p256_2 else [],
            "reference_median": p256_2,
            "ratio": (ms / p256_2) if ms and p256_2 else None,
            "paired_ratios": [],
            "target": TARGETS["signatures"],
        }
    )
    ceilings = [
        ("ring raw rate, 1 thread", speed.get(("ring", 1))),
        ("ring raw rate, 2 threads", speed.get(("ring", 2))),
        ("p256 (RustCrypto) raw rate, 1 thread", speed.get(("p256", 1))),
        ("p256 (RustCrypto) raw rate, 2 threads", speed.get(("p256", 2))),
        ("openssl speed ecdsap256, 1 process", speed.get(("openssl", 1))),
        ("openssl speed -multi 2 ecdsap256", speed.get(("openssl", 2))),
    ]

    # ---- table
    L = []
    mode = "quick: " if meta.get("quick") else ""
    L.append(
        f"jitocsp benchmark {meta.get('stamp', '?')}  ({mode}{meta.get('runs')} run(s) x {meta.get('duration')} s per figure, "
        f"medians; wrk -t{meta.get('threads')} -c{meta.get('connections')}; loopback; {meta.get('cores')} cores)"
    )
    L.append(
        f"jitocsp {meta.get('git')}, JITOCSP_SERVER_WORKERS={meta.get('workers')}, signing.p256_backend={meta.get('backend')}; nginx {meta.get('nginx')} "
        f"worker_processes {meta.get('workers')}; OpenSSL {meta.get('openssl')}; wrk {meta.get('wrk')}"
    )
    L.append(
        f"response: {meta.get('body_bytes')} B DER (jitocsp {meta.get('jitocsp_response_bytes')} B with headers, "
        f"nginx {meta.get('nginx_response_bytes')} B, openssl ocsp {meta.get('openssl_response_bytes')} B); "
        f"{meta.get('imported'):,} certificates imported in {meta.get('import_seconds')} s"
    )
    L.append(
        f"load average (1/5/15 min) at start {meta.get('load_start')}, at end {meta.get('load_end')} "
        f"(the machine is shared: other builds and tests add noise to both sides of every ratio)"
    )
    L.append("")
    w1, w2, w3 = 48, 34, 36
    L.append(f"{'figure':<{w1}} {'jitocsp (median) [runs]':<{w2}} {'reference (median) [runs]':<{w3}}  ratio   target  met")
    L.append("-" * (w1 + w2 + w3 + 22))
    for fg in figures:
        runs_s = " ".join(fmt_rate(x) for x in fg["subject_runs"])
        runs_r = " ".join(fmt_rate(x) for x in fg["reference_runs"])
        subj = f"{fmt_rate(fg['subject_median'])} {fg['unit']}" + (f" [{runs_s}]" if len(fg["subject_runs"]) > 1 else "")
        ref = f"{fmt_rate(fg['reference_median'])}" + (f" [{runs_r}]" if len(fg["reference_runs"]) > 1 else "")
        ratio = "-" if fg["ratio"] is None else f"{fg['ratio']:.2f}x"
        met = "-" if fg["ratio"] is None else ("yes" if fg["ratio"] >= fg["target"] else "NO")
        fg["met"] = None if fg["ratio"] is None else fg["ratio"] >= fg["target"]
        L.append(f"{fg['label']:<{w1}} {subj:<{w2}} {ref:<{w3}}  {ratio:<6}  >={fg['target']:<4}  {met}")
        L.append(f"{'':<{w1}} {'':<{w2}} {'  = ' + fg['reference']:<{w3}}")
    L.append("")
    L.append("signing ceilings on this machine (nothing else of ours running):")
    for name, rate in ceilings:
        L.append(f"  {name:<40} {fmt_rate(rate):>10} sign/s")
    if ms and speed.get(("openssl", 2)):
        L.append(f"  cold signatures/s vs openssl -multi 2: {ms / speed[('openssl', 2)]:.2f}x (information; the target is vs the backend in use, {backend})")
    L.append("")
    L.append("per run (req/s, latency p50/p99 ms, errors, bytes per response, CPU used by other processes")
    L.append("         during the run as % of the machine; jitocsp: signatures, Postgres reads, cache hits):")
    for r in sorted(runs, key=lambda r: (["hot", "hot-local", "cold"].index(r["figure"]), r["run"], r["name"])):
        extra = ""
        if r["name"] == "jitocsp":
            extra = (
                f"  sig={r.get('m_signatures', 0)} db={r.get('m_db_reads', 0)} redis_hit={r.get('m_redis_hit', 0)} "
                f"local_hit={r.get('m_local_hit', 0)} not_successful={r.get('m_ocsp_all', 0) - r.get('m_ocsp_ok', 0)}"
            )
        L.append(
            f"  {r['figure']:<9} run {r['run']} {r['name']:<12} {r['rps']:>10,.0f}  "
            f"{r['lat_p50_us'] / 1000:6.2f}/{r['lat_p99_us'] / 1000:6.2f} ms  err={r.get('errors', 0)}  "
            f"{r.get('bytes_per_response', 0):.0f} B/resp  other_cpu={r.get('other_cpu_pct', 0):.0f}%{extra}"
        )
    ratios = {fg["figure"]: fg["ratio"] for fg in figures}
    L.append("")
    L.append(
        "ratios: "
        + ", ".join(
            f"{k} {('-' if v is None else f'{v:.2f}x')} (target >= {TARGETS[k]}x)" for k, v in ratios.items()
        )
    )
    for w in warnings:
        L.append(f"warning: {w}")
    for p in problems:
        L.append(f"PROBLEM: {p}")
    L.append("result: " + ("FAILED (something did not work; see PROBLEM lines)" if problems else "ok (every run worked; targets are information, not pass/fail)"))
    text = "\n".join(L) + "\n"
    sys.stdout.write(text)
    with open(out_txt, "w") as f:
        f.write(text)
    with open(out_json, "w") as f:
        json.dump(
            {
                "meta": meta,
                "figures": figures,
                "ceilings": {name: rate for name, rate in ceilings},
                "runs": runs,
                "warnings": warnings,
                "problems": problems,
                "ok": not problems,
            },
            f,
            indent=2,
        )
        f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
