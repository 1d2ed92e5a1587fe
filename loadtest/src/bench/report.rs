//! The benchmark's report: every figure as median(jitocsp) / median(reference) with the runs
//! beside it, what did not work (problems: the run is invalid) and what to read with care
//! (warnings). Written as `report.txt` (the table) and `report.json` (everything, every run).

use std::fmt::Write as _;

use serde::Serialize;

use super::measure::{RunRecord, Sizes};
use super::speed::Ceiling;
use crate::report::median;

/// The figures, their references and targets (/work/shared/PERFORMANCE.md).
pub const FIGURES: [(&str, &str, &str, f64); 4] = [
    ("hot", "hot: Redis hit, local tier off (keep-alive)", "nginx, static file of the same size", 0.75),
    ("hot-local", "hot: local tier on (keep-alive)", "nginx, static file of the same size", 1.05),
    ("cold", "cold: new serial per request (Connection: close)", "openssl ocsp -index -multi 2", 1.5),
    ("signatures", "cold keep-alive: signatures/s", "raw rate of the backend in use, 2 threads", 0.5),
];

/// Facts about the run, printed in the header.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    pub stamp: String,
    pub quick: bool,
    pub runs: usize,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub connections: usize,
    pub generator_threads: usize,
    pub cores: usize,
    pub git: String,
    pub workers: usize,
    pub backend: String,
    pub hot_certs: u64,
    pub seeded: u64,
    pub seed_seconds: f64,
    pub jitocsp: Sizes,
    pub nginx: Sizes,
    pub openssl: Sizes,
    pub nginx_version: String,
    pub openssl_version: String,
    pub load_average_start: String,
    pub load_average_end: String,
    /// The figures measured (`--figures`); the report has only these.
    pub figures: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub figure: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub subject_runs: Vec<f64>,
    pub subject_median: Option<f64>,
    pub reference: &'static str,
    pub reference_runs: Vec<f64>,
    pub reference_median: Option<f64>,
    pub ratio: Option<f64>,
    /// jitocsp / reference run by run (runs alternate, so neighbours share the machine's mood).
    pub paired_ratios: Vec<f64>,
    pub target: f64,
    pub met: Option<bool>,
}

/// The generator against wrk on the hot reference's nginx (medians of the alternating runs).
#[derive(Clone, Debug, Serialize)]
pub struct ClientCheck {
    pub generator_rps: f64,
    pub wrk_rps: f64,
    /// generator / wrk: near 1 or above, the generator is not what bounds the hot rates.
    pub ratio: f64,
    /// Client CPU per answer (us): the generator process's, wrk's.
    pub generator_us_per_answer: f64,
    pub wrk_us_per_answer: f64,
}

/// Below this share of wrk's rate against nginx, the generator may be what bounds the hot rates.
const CLIENT_CHECK_MIN: f64 = 0.9;

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub meta: Meta,
    pub figures: Vec<Figure>,
    /// None when wrk is not installed.
    pub client: Option<ClientCheck>,
    pub ceilings: Vec<Ceiling>,
    pub runs: Vec<RunRecord>,
    pub warnings: Vec<String>,
    pub problems: Vec<String>,
    pub ok: bool,
}

/// Signatures per second of a run, from jitocsp's counter.
fn signatures_per_s(r: &RunRecord) -> Option<f64> {
    r.counters.as_ref().map(|c| c.signatures / r.stats.seconds)
}

impl BenchReport {
    pub fn new(meta: Meta, runs: Vec<RunRecord>, ceilings: Vec<Ceiling>, mut problems: Vec<String>) -> BenchReport {
        let mut warnings = Vec::new();
        for r in &runs {
            check_run(r, meta.connections, &mut problems, &mut warnings);
        }
        let raw = ceilings.iter().find(|c| c.implementation == meta.backend && c.threads == 2).map(|c| c.rate);
        let figures = FIGURES
            .iter()
            .filter(|(figure, ..)| meta.figures.contains(figure))
            .map(|&(figure, label, reference, target)| {
                let of = |role: &'static str| runs.iter().filter(move |r| r.role == role && r.figure == figure);
                let (subject_runs, reference_runs, unit): (Vec<f64>, Vec<f64>, _) = if figure == "signatures" {
                    (of("subject").filter_map(signatures_per_s).collect(), raw.into_iter().collect(), "sign/s")
                } else {
                    (
                        of("subject").map(|r| r.stats.rps).collect(),
                        of("reference").map(|r| r.stats.rps).collect(),
                        "req/s",
                    )
                };
                let paired_ratios = of("subject")
                    .filter_map(|s| Some(s.stats.rps / of("reference").find(|r| r.run == s.run)?.stats.rps))
                    .filter(|r| r.is_finite())
                    .collect();
                let (subject_median, reference_median) = (median(subject_runs.clone()), median(reference_runs.clone()));
                let ratio = subject_median.zip(reference_median).filter(|(_, r)| *r > 0.0).map(|(s, r)| s / r);
                Figure {
                    figure,
                    label,
                    unit,
                    subject_runs,
                    subject_median,
                    reference,
                    reference_runs,
                    reference_median,
                    ratio,
                    paired_ratios,
                    target,
                    met: ratio.map(|r| r >= target),
                }
            })
            .collect();
        let client = client_check(&runs);
        if let Some(c) = client.as_ref().filter(|c| c.ratio < CLIENT_CHECK_MIN) {
            warnings.push(format!(
                "the generator drove nginx at {:.2}x wrk's rate (below {CLIENT_CHECK_MIN}): the hot ratios may measure the \
                 client rather than the servers",
                c.ratio
            ));
        }
        let ok = problems.is_empty();
        BenchReport { meta, figures, client, ceilings, runs, warnings, problems, ok }
    }

    pub fn text(&self) -> String {
        let m = &self.meta;
        let mut out = String::new();
        let quick = if m.quick { "quick: " } else { "" };
        let _ = writeln!(
            out,
            "jitocsp benchmark {}  ({quick}{} run(s) x {} s per figure, medians; jitocsp-loadtest closed loop, {} \
             connections, {} threads; loopback; {} cores)",
            m.stamp, m.runs, m.duration_s, m.connections, m.generator_threads, m.cores
        );
        let _ = writeln!(
            out,
            "jitocsp {}, JITOCSP_SERVER_WORKERS={}, signing.p256_backend={}; {} worker_processes {}; {}",
            m.git, m.workers, m.backend, m.nginx_version, m.workers, m.openssl_version
        );
        // Only the sides the chosen figures fetched have sizes (nginx: hot figures; openssl: cold).
        let with_headers = [("jitocsp", &m.jitocsp), ("nginx", &m.nginx), ("openssl ocsp", &m.openssl)]
            .iter()
            .filter(|(_, size)| size.body > 0)
            .map(|(side, size)| format!("{side} {} B", size.body + size.head))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "response: {} B DER (with headers: {with_headers}); {} certificates seeded in {:.1} s",
            m.jitocsp.body, m.seeded, m.seed_seconds
        );
        let _ = writeln!(
            out,
            "load average (1/5/15 min) at start {}, at end {} (the machine is shared: other builds and tests add noise \
             to both sides of every ratio)\n",
            m.load_average_start, m.load_average_end
        );
        let rate = |x: Option<f64>| x.map_or("-".to_owned(), |x| thousands(x.round() as u64));
        let runs = |xs: &[f64]| {
            if xs.len() > 1 {
                format!(" [{}]", xs.iter().map(|x| rate(Some(*x))).collect::<Vec<_>>().join(" "))
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "{:<48} {:<34} {:<36}  ratio   target  met",
            "figure", "jitocsp (median) [runs]", "reference (median) [runs]"
        );
        let _ = writeln!(out, "{}", "-".repeat(140));
        for f in &self.figures {
            let subject = format!("{} {}{}", rate(f.subject_median), f.unit, runs(&f.subject_runs));
            let reference = format!("{}{}", rate(f.reference_median), runs(&f.reference_runs));
            let ratio = f.ratio.map_or("-".to_owned(), |r| format!("{r:.2}x"));
            let met = f.met.map_or("-", |m| if m { "yes" } else { "NO" });
            let _ =
                writeln!(out, "{:<48} {subject:<34} {reference:<36}  {ratio:<6}  >={:<4}  {met}", f.label, f.target);
            let _ = writeln!(out, "{:<48} {:<34} {:<36}", "", "", format!("  = {}", f.reference));
        }
        match &self.client {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "\nclient check (the hot reference's nginx, runs alternating, medians): jitocsp-loadtest {} req/s at \
                     {:.1} us of client CPU per answer, wrk -t{} -c{} {} req/s at {:.1} us: {:.2}x{}",
                    thousands(c.generator_rps.round() as u64),
                    c.generator_us_per_answer,
                    m.generator_threads,
                    m.connections,
                    thousands(c.wrk_rps.round() as u64),
                    c.wrk_us_per_answer,
                    c.ratio,
                    if c.ratio >= CLIENT_CHECK_MIN {
                        " (the generator keeps up with wrk: it does not bound the hot rates)"
                    } else {
                        " (BELOW wrk: see the warning)"
                    }
                );
            }
            None => {
                let _ = writeln!(out, "\nclient check: not run (wrk is not installed)");
            }
        }
        let _ = writeln!(out, "\nsigning ceilings on this machine (nothing else of ours running):");
        for c in &self.ceilings {
            let name = match c.implementation.as_str() {
                "openssl" if c.threads == 1 => "openssl speed ecdsap256, 1 process".to_owned(),
                "openssl" => format!("openssl speed -multi {} ecdsap256", c.threads),
                other => format!("{other} raw rate (jitocsp's signer), {} thread(s)", c.threads),
            };
            let _ = writeln!(out, "  {name:<44} {:>10} sign/s", thousands(c.rate.round() as u64));
        }
        let _ = writeln!(
            out,
            "\nper run (answers/s within the run, latency p50/p99 ms, failures, CPU used by other processes during the \
             run as % of the machine, the client's CPU in cores and us per answer, the server's CPU per answer;\n         jitocsp: signatures, \
             Postgres reads, cache hits, answers not successful):"
        );
        for r in &self.runs {
            let mut line = format!(
                "  {:<10} run {} {:<12} {:>10}  {:6.2}/{:7.2} ms  err={}  other_cpu={:.0}%  client={:.2}c/{:.1}us  server={:.1}us",
                r.figure,
                r.run,
                r.name,
                thousands(r.stats.rps.round() as u64),
                r.stats.p50_ms,
                r.stats.p99_ms,
                r.stats.failed,
                r.other_cpu_pct,
                r.stats.client_cores,
                r.stats.client_us_per_answer,
                r.server_us_per_answer
            );
            if let Some(c) = &r.counters {
                let _ = write!(
                    line,
                    "  sig={:.0} db={:.0} redis_hit={:.0} local_hit={:.0} not_successful={:.0}",
                    c.signatures,
                    c.db_reads,
                    c.redis_hits,
                    c.local_hits,
                    c.requests - c.successful
                );
            }
            let _ = writeln!(out, "{line}");
        }
        let ratios: Vec<String> = self
            .figures
            .iter()
            .map(|f| {
                format!("{} {} (target >= {}x)", f.figure, f.ratio.map_or("-".into(), |r| format!("{r:.2}x")), f.target)
            })
            .collect();
        let _ = writeln!(out, "\nratios: {}", ratios.join(", "));
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        let _ = writeln!(
            out,
            "result: {}",
            if self.ok {
                "ok (every run worked; targets are information, not pass/fail)"
            } else {
                "FAILED (something did not work; see PROBLEM lines)"
            }
        );
        out
    }
}

fn client_check(runs: &[RunRecord]) -> Option<ClientCheck> {
    let of = |name: &str, f: fn(&RunRecord) -> f64| {
        median(runs.iter().filter(|r| r.figure == "client" && r.name == name).map(f).collect())
    };
    let (generator_rps, wrk_rps) = (of("generator", |r| r.stats.rps)?, of("wrk", |r| r.stats.rps)?);
    Some(ClientCheck {
        generator_rps,
        wrk_rps,
        ratio: generator_rps / wrk_rps,
        generator_us_per_answer: of("generator", |r| r.stats.client_us_per_answer)?,
        wrk_us_per_answer: of("wrk", |r| r.stats.client_us_per_answer)?,
    })
}

/// What makes a run invalid (problems) or worth reading with care (warnings).
fn check_run(r: &RunRecord, connections: usize, problems: &mut Vec<String>, warnings: &mut Vec<String>) {
    let tag = format!("{} {} run {}", r.figure, r.name, r.run);
    if r.stats.failed > 0 {
        problems.push(format!("{tag}: {} requests failed: {:?}", r.stats.failed, r.stats.failures));
    }
    if r.stats.exhausted {
        problems.push(format!("{tag}: the serial list ran out (raise --cold-max-rate / --ref-max-rate)"));
    }
    if r.stats.answered == 0 {
        problems.push(format!("{tag}: no answer within the run"));
    }
    if r.other_cpu_pct > 10.0 {
        warnings.push(format!(
            "{tag}: other processes used {:.0}% of the CPU during the run (noise: compare with the reference's runs)",
            r.other_cpu_pct
        ));
    }
    let Some(c) = &r.counters else { return };
    let n = r.stats.answered_total as f64;
    if c.requests != c.successful {
        problems.push(format!(
            "{tag}: {:.0} OCSP answers were not 'successful' (signer overloaded {:.0}, Redis errors {:.0}, Postgres \
             errors {:.0})",
            c.requests - c.successful,
            c.signer_overloaded,
            c.redis_errors,
            c.db_errors
        ));
    }
    if r.figure.starts_with("hot") && (c.signatures > 0.01 * n || c.db_reads > 0.01 * n) {
        problems.push(format!(
            "{tag}: not a hot run: {} signatures and {} Postgres reads for {n} answers",
            c.signatures, c.db_reads
        ));
    }
    if r.figure == "hot" && c.redis_hits < 0.99 * n {
        warnings.push(format!("{tag}: only {} of {n} answers were Redis hits", c.redis_hits));
    }
    if r.figure == "hot-local" && c.local_hits < 0.99 * n {
        warnings.push(format!("{tag}: only {} of {n} answers were local-tier hits", c.local_hits));
    }
    // A run may end with one request in flight per connection, answered after the counters were read.
    if (r.figure == "cold" || r.figure == "signatures") && c.signatures < 0.99 * n - connections as f64 {
        problems.push(format!("{tag}: not a cold run: {} signatures for {n} answers", c.signatures));
    }
}

/// 12345678 as "12,345,678".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(100), "100");
    }
}
