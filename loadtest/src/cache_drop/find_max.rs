//! `cache-drop --find-max`: the largest full rate F a cold origin survives, by bisection.
//!
//! F_max is the largest F at which every step of the cache-drop schedule (1/16 .. 1 of F by
//! default) has success >= 99.9% and p99 < 100 ms (PERFORMANCE.md), in origin mode with a
//! cold cache, divided by nginx's static-file rate measured by this generator in the same run
//! (closed loop, the benchmark's hot reference: 64 connections cycling GET paths of real
//! requests, nginx serving a verified answer for every path).
//!
//! Each probe gets a responder of its own: started afresh (an empty local tier and no recent
//! signatures in memory) with a Redis key prefix of its own (a cold Redis), whose keys are
//! unlinked when the probe is over. Postgres keeps its buffer cache between probes, as a
//! production database would. nginx is measured before the first probe and after the last,
//! so the ratio uses a reference taken under the same conditions as the probes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::{steps, summary, Plan};
use crate::bench::{measure, procs, SAMPLE};
use crate::cli::{load_corpus, CacheDropArgs, Mode, RunArgs};
use crate::closed::{self, Pick, RunStats};
use crate::corpus::{Corpus, Status};
use crate::gen::{Check, Ctx, Requested, Target};
use crate::report::{self, StepReport};

#[derive(clap::Args)]
pub struct FindMaxArgs {
    /// Find F_max by bisection instead of running one schedule at --full-rate: origin mode,
    /// a freshly started responder with a cold Redis per probe (the options below marked
    /// "find-max"), Poisson arrivals and 6 s steps unless given.
    #[arg(long)]
    pub find_max: bool,
    /// find-max: the lowest full rate tried (requests/s); if it fails, F_max is below it.
    #[arg(long, default_value_t = 1000.0)]
    pub lo: f64,
    /// find-max: the highest full rate considered [default: nginx's static-file rate measured
    /// at the start of the run].
    #[arg(long)]
    pub hi: Option<f64>,
    /// find-max: stop when hi / lo is below this.
    #[arg(long, default_value_t = 1.1)]
    pub precision: f64,
    /// find-max: a step passes with at least this share of verified answers...
    #[arg(long = "pass-success", default_value_t = 0.999)]
    pub pass_success: f64,
    /// find-max: ...and a p99 latency below this many milliseconds.
    #[arg(long = "pass-p99-ms", default_value_t = 100.0)]
    pub pass_p99_ms: f64,
    /// find-max: seconds of each closed-loop nginx run (one before the probes, one after),
    /// each after 1 s of unrecorded warm-up.
    #[arg(long, default_value_t = 5)]
    pub reference_seconds: u64,
    /// find-max: the jitocsp binary started for each probe (release).
    #[arg(long)]
    pub jitocsp: Option<PathBuf>,
    /// find-max: logs and nginx's files go here.
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// find-max: Redis key prefix; probe N's responder uses PREFIX-pN, unlinked after the probe.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// find-max: JITOCSP_SERVER_WORKERS and nginx's worker_processes (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// find-max: the responders' signing.p256_backend.
    #[arg(long, default_value = "ring")]
    pub backend: String,
}

/// The bisection over full rates: `lo` is tried first; from then on `lo` is the highest rate
/// known to pass and `hi` the lowest known (or assumed) to fail, and the geometric middle is
/// tried (rounded to whole requests per second) until `hi / lo < precision`. `hi` itself is never tried: it starts as nginx's rate,
/// which an origin is not expected to sustain; if nothing fails, the result says so.
#[derive(Clone, Debug)]
pub struct Bisection {
    lo: f64,
    hi: f64,
    precision: f64,
    lo_tried: bool,
    lo_failed: bool,
    failed_once: bool,
}

/// What the bisection found.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", content = "rate", rename_all = "snake_case")]
pub enum Found {
    /// The lowest rate tried failed: F_max is below it.
    Below(f64),
    /// The highest rate that passed, with a failure within `precision` above it.
    At(f64),
    /// Every probe passed: F_max is at least this (the upper bound was too low).
    AtLeast(f64),
}

impl Found {
    /// The rate reported as F_max (None when below the lowest rate tried).
    pub fn rate(self) -> Option<f64> {
        match self {
            Found::Below(_) => None,
            Found::At(r) | Found::AtLeast(r) => Some(r),
        }
    }
}

impl Bisection {
    pub fn new(lo: f64, hi: f64, precision: f64) -> anyhow::Result<Bisection> {
        anyhow::ensure!(lo.is_finite() && lo > 0.0, "--lo must be a positive rate");
        anyhow::ensure!(hi.is_finite() && hi > lo, "--hi ({hi:.0}) must be above --lo ({lo:.0})");
        anyhow::ensure!(precision.is_finite() && precision > 1.0, "--precision must be above 1");
        Ok(Bisection { lo, hi, precision, lo_tried: false, lo_failed: false, failed_once: false })
    }

    /// The next full rate to try, or None when the answer is known.
    pub fn next(&self) -> Option<f64> {
        if !self.lo_tried {
            Some(self.lo)
        } else if self.lo_failed || self.hi / self.lo < self.precision {
            None
        } else {
            // Whole requests per second read better, when rounding keeps the rate inside.
            let mid = (self.lo * self.hi).sqrt();
            Some(if mid.round() > self.lo && mid.round() < self.hi { mid.round() } else { mid })
        }
    }

    /// Records whether the rate [`Bisection::next`] gave passed.
    pub fn record(&mut self, rate: f64, passed: bool) {
        if !self.lo_tried {
            self.lo_tried = true;
            self.lo_failed = !passed;
        } else if passed {
            self.lo = rate;
        } else {
            self.hi = rate;
            self.failed_once = true;
        }
    }

    pub fn found(&self) -> Found {
        if self.lo_failed {
            Found::Below(self.lo)
        } else if self.failed_once {
            Found::At(self.lo)
        } else {
            Found::AtLeast(self.lo)
        }
    }
}

/// The rule a probe must meet at every step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rule {
    pub min_success: f64,
    pub max_p99_ms: f64,
}

/// A probe's verdict: whether every step met the rule, and its worst figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeVerdict {
    pub passed: bool,
    /// The lowest success ratio of any step, and that step's fraction.
    pub worst_success: f64,
    pub worst_success_fraction: f64,
    /// The highest p99 of any step (ms), and that step's fraction.
    pub worst_p99_ms: f64,
    pub worst_p99_fraction: f64,
    /// Answers that were not correct OCSP responses (a bug, not a capacity limit).
    pub unverified: u64,
}

impl Rule {
    pub fn judge(&self, steps: &[StepReport]) -> ProbeVerdict {
        let mut v = ProbeVerdict {
            passed: !steps.is_empty(),
            worst_success: f64::INFINITY,
            worst_success_fraction: 0.0,
            worst_p99_ms: 0.0,
            worst_p99_fraction: 0.0,
            unverified: 0,
        };
        for s in steps {
            // A step with no request scheduled proves nothing: it fails (success 0).
            let meets = s.requests > 0 && s.success_ratio >= self.min_success && s.p99_ms < self.max_p99_ms;
            v.passed &= meets && s.unverified == 0;
            v.unverified += s.unverified;
            if s.success_ratio < v.worst_success {
                (v.worst_success, v.worst_success_fraction) = (s.success_ratio, s.fraction);
            }
            if s.p99_ms >= v.worst_p99_ms {
                (v.worst_p99_ms, v.worst_p99_fraction) = (s.p99_ms, s.fraction);
            }
        }
        if steps.is_empty() {
            v.worst_success = 0.0;
        }
        v
    }
}

/// One probe.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub n: usize,
    pub full_rate: f64,
    #[serde(flatten)]
    pub verdict: ProbeVerdict,
    /// The scheduler's worst lag (p99 over the steps, ms) and the generator's most CPU in any
    /// step (cores): the generator's own health during the probe.
    pub generator_lag_p99_ms: f64,
    pub generator_cpu_cores: f64,
    /// Where the machine's CPU went during the last (full) step, and its signatures/s.
    pub full_step_cpu: Option<crate::cpu::Breakdown>,
    pub full_step_signatures_per_s: f64,
    pub load_average_start: String,
    pub load_average_end: String,
    /// The probe's full cache-drop report (report.json, .txt, .svg).
    pub report_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct FindMaxReport {
    pub found: Found,
    pub f_max: Option<f64>,
    /// nginx's static-file rate (closed loop, this generator): before the probes, after, and
    /// their mean, the ratio's denominator.
    pub nginx_runs: Vec<RunStats>,
    pub nginx_rps: f64,
    pub ratio: Option<f64>,
    pub target_ratio: f64,
    pub lo: f64,
    pub hi: f64,
    pub precision: f64,
    pub rule: Rule,
    pub step_seconds: f64,
    pub fractions: String,
    pub arrival: String,
    pub certificates: u64,
    pub connections: usize,
    pub generator_threads: usize,
    pub probes: Vec<Probe>,
    pub load_average_start: String,
    pub load_average_end: String,
    /// Wrong answers or dead responders: the result is not to be trusted.
    pub problems: Vec<String>,
    /// Probes whose generator fell behind: read their verdicts with care.
    pub warnings: Vec<String>,
}

/// The target of issue 11: F_max >= 0.3 x nginx's static-file rate.
const TARGET_RATIO: f64 = 0.3;
/// A scheduler lag (p99, ms) above this means the generator, not the origin, was late.
const LAG_WARNING_MS: f64 = 10.0;

/// What `--find-max` needs beyond the schedule's options, checked.
struct Setup {
    run: RunArgs,
    workers: usize,
    backend: String,
}

fn setup(args: &CacheDropArgs) -> anyhow::Result<Setup> {
    let f = &args.find_max;
    anyhow::ensure!(args.mode == Mode::Origin, "--find-max measures an origin: use --mode origin");
    anyhow::ensure!(args.load.targets.is_empty(), "--find-max starts its own responders: give no --target");
    anyhow::ensure!(args.corpus.issuers.len() == 1, "--find-max takes exactly one --issuer");
    let need = |v: &Option<String>, name: &str| v.clone().with_context(|| format!("--find-max needs {name}"));
    let key_prefix = need(&f.key_prefix, "--key-prefix")?;
    anyhow::ensure!(
        !key_prefix.is_empty() && key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "--key-prefix {key_prefix:?}: letters, digits, '-' and '_' only (it is also a Redis SCAN pattern)"
    );
    let run = RunArgs {
        issuer: args.corpus.issuers[0].clone(),
        jitocsp: f.jitocsp.clone().context("--find-max needs --jitocsp")?,
        work: f.work.clone().context("--find-max needs --work")?,
        out: args.out.clone(),
        database_url: need(&f.database_url, "--database-url (or DATABASE_URL)")?,
        redis_url: need(&f.redis_url, "--redis-url (or REDIS_URL)")?,
        key_prefix,
    };
    let workers = match f.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Ok(Setup { run, workers, backend: f.backend.clone() })
}

pub async fn run(args: &CacheDropArgs) -> anyhow::Result<()> {
    let s = setup(args)?;
    let f = &args.find_max;
    let rule = Rule { min_success: f.pass_success, max_p99_ms: f.pass_p99_ms };
    std::fs::create_dir_all(&s.run.work)?;
    std::fs::create_dir_all(&args.out)?;
    let corpus = Arc::new(load_corpus(&args.corpus)?);
    let load_average_start = report::load_average();

    // The reference: one verified answer, served by nginx for every path.
    let response = {
        let probe = Responder::start(&s, "reference", format!("{}-ref", s.run.key_prefix)).await?;
        let good: Vec<u64> =
            (0..corpus.count).filter(|&i| corpus.status(0, i) == Status::Good).take(SAMPLE as usize).collect();
        let ctx = probe.ctx(&corpus, args.load.threads);
        let verified = tokio::task::block_in_place(|| measure::verify_sample(&ctx, probe.listen, &good));
        probe.stop().await;
        verified?.0
    };
    let (nginx, nginx_addr) = tokio::task::block_in_place(|| procs::nginx(&s.run.work, s.workers, &response))?;
    let mut nginx_ctx = Ctx::new(Target::at(nginx_addr), corpus.clone(), args.load.threads);
    nginx_ctx.check = Check::Size { len: response.len(), slack: 0 };
    let nginx_ctx = Arc::new(nginx_ctx);
    let hot = corpus.count.min(20_000);
    let reference = |label: &'static str| {
        let nginx_ctx = nginx_ctx.clone();
        async move {
            let cycle = || Arc::new(Pick::Cycle { count: hot });
            closed::run_for(&nginx_ctx, REFERENCE_CONNECTIONS, Duration::from_secs(1), cycle(), u64::MAX).await;
            let st = closed::run_for(
                &nginx_ctx,
                REFERENCE_CONNECTIONS,
                Duration::from_secs(f.reference_seconds.max(1)),
                cycle(),
                u64::MAX,
            )
            .await;
            eprintln!(
                "find-max: nginx static file {label}: {:.0} answers/s (p99 {:.2} ms, {} failed, generator {:.2} cores)",
                st.rps, st.p99_ms, st.failed, st.client_cores
            );
            st
        }
    };
    let mut nginx_runs = vec![reference("before the probes").await];
    let hi = f.hi.unwrap_or(nginx_runs[0].ok_rps);
    let mut bisection = Bisection::new(f.lo, hi, f.precision)?;

    let (mut probes, mut problems, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(rate) = bisection.next() {
        let n = probes.len() + 1;
        let probe = run_probe(args, &s, &corpus, n, rate, rule).await?;
        eprintln!(
            "find-max: probe {n} at F = {rate:.0} req/s: {} (worst step: success {:.4} at {}, p99 {:.1} ms at {})",
            if probe.verdict.passed { "pass" } else { "FAIL" },
            probe.verdict.worst_success,
            fraction_label(probe.verdict.worst_success_fraction),
            probe.verdict.worst_p99_ms,
            fraction_label(probe.verdict.worst_p99_fraction),
        );
        if probe.verdict.unverified > 0 {
            problems.push(format!(
                "probe {n}: {} answers were not correct OCSP responses (see {})",
                probe.verdict.unverified,
                probe.report_dir.display()
            ));
        }
        if probe.generator_lag_p99_ms > LAG_WARNING_MS {
            warnings.push(format!(
                "probe {n}: the generator handed requests over late (scheduler lag p99 {:.1} ms): the machine, not only the origin, was busy",
                probe.generator_lag_p99_ms
            ));
        }
        bisection.record(rate, probe.verdict.passed);
        probes.push(probe);
    }
    nginx_runs.push(reference("after the probes").await);
    drop(nginx);
    for r in &nginx_runs {
        if r.failed > 0 {
            problems.push(format!("nginx: {} answers failed: {:?}", r.failed, r.failures));
        }
    }

    let found = bisection.found();
    let nginx_rps = nginx_runs.iter().map(|r| r.ok_rps).sum::<f64>() / nginx_runs.len() as f64;
    let report = FindMaxReport {
        found,
        f_max: found.rate(),
        ratio: found.rate().map(|r| r / nginx_rps),
        nginx_rps,
        nginx_runs,
        target_ratio: TARGET_RATIO,
        lo: f.lo,
        hi,
        precision: f.precision,
        rule,
        step_seconds: args.step_seconds(),
        fractions: args.fractions.clone(),
        arrival: format!("{:?}", args.arrival()).to_lowercase(),
        certificates: corpus.count,
        connections: args.load.connections,
        generator_threads: args.load.threads,
        probes,
        load_average_start,
        load_average_end: report::load_average(),
        problems,
        warnings,
    };
    let text = report.text();
    std::fs::write(args.out.join("find-max.json"), serde_json::to_string_pretty(&report)? + "\n")
        .context("writing find-max.json")?;
    std::fs::write(args.out.join("find-max.txt"), &text).context("writing find-max.txt")?;
    print!("{text}");
    anyhow::ensure!(report.problems.is_empty(), "something did not work (PROBLEM lines above)");
    Ok(())
}

/// Closed-loop connections for nginx's rate: the benchmark's reference setting.
const REFERENCE_CONNECTIONS: usize = 64;

/// One schedule at `rate` against a fresh responder with a cold cache.
async fn run_probe(
    args: &CacheDropArgs,
    s: &Setup,
    corpus: &Arc<Corpus>,
    n: usize,
    rate: f64,
    rule: Rule,
) -> anyhow::Result<Probe> {
    let plan = Plan::new(args, rate)?;
    let responder = Responder::start(s, &format!("p{n}"), format!("{}-p{n}", s.run.key_prefix)).await?;
    let ctx = Arc::new(responder.ctx(corpus, args.load.threads));
    let requested = Arc::new(Requested::new(corpus.issuers.len(), corpus.count));
    let who = crate::cpu::Who::new(
        vec![responder.server.pid()],
        Some(s.run.database_url.as_str()),
        Some(s.run.redis_url.as_str()),
    );
    let outcome = steps::run(args, &plan, &ctx, &requested, &None, &[responder.metrics], Some(who)).await;
    let alive = responder.stop().await;
    let mut report = summary::report(args, &plan, &ctx, outcome?, None, true);
    report.redis = "cold (a fresh key prefix and a freshly started responder)".into();
    anyhow::ensure!(alive, "probe {n}: the responder died during the probe (log in the work directory)");
    let report_dir = args.out.join(format!("probe-{n:02}-{rate:.0}"));
    report::write_all(&report, &report_dir)?;
    let worst = |f: fn(&StepReport) -> f64| report.steps.iter().map(f).fold(0.0, f64::max);
    Ok(Probe {
        n,
        full_rate: rate,
        verdict: rule.judge(&report.steps),
        generator_lag_p99_ms: worst(|s| s.generator_lag_p99_ms),
        generator_cpu_cores: worst(|s| s.generator_cpu_cores),
        full_step_cpu: report.steps.last().and_then(|s| s.cpu),
        full_step_signatures_per_s: report.steps.last().map_or(0.0, |s| s.signatures_per_s),
        load_average_start: report.load_average_start.clone(),
        load_average_end: report.load_average_end.clone(),
        report_dir,
    })
}

/// A responder started for one probe, with its own key prefix.
struct Responder {
    server: procs::Server,
    listen: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    redis_url: String,
    key_prefix: String,
}

impl Responder {
    async fn start(s: &Setup, tag: &str, key_prefix: String) -> anyhow::Result<Responder> {
        let run = RunArgs { key_prefix: key_prefix.clone(), ..s.run.clone() };
        let spec = procs::JitocspSpec { run: &run, workers: s.workers, backend: &s.backend, env: &[] };
        let (mut server, listen, metrics) =
            tokio::task::block_in_place(|| procs::jitocsp(&spec, &format!("find-max.{tag}"), 0))?;
        // Ready, not only alive: a cold probe's first step must not meet a responder still
        // connecting to Postgres or Redis.
        tokio::task::block_in_place(|| server.wait_ready(metrics, "/readyz", Duration::from_secs(30)))?;
        Ok(Responder { server, listen, metrics, redis_url: run.redis_url, key_prefix })
    }

    fn ctx(&self, corpus: &Arc<Corpus>, threads: usize) -> Ctx {
        Ctx::new(Target::at(self.listen), corpus.clone(), threads)
    }

    /// Stops the responder and unlinks its Redis keys; returns whether it was still running.
    async fn stop(self) -> bool {
        let Responder { mut server, redis_url, key_prefix, .. } = self;
        let alive = server.alive();
        tokio::task::block_in_place(|| drop(server));
        match unlink_prefix(&redis_url, &key_prefix).await {
            Ok(n) => eprintln!("find-max: unlinked {n} Redis keys under {key_prefix}:"),
            Err(e) => {
                eprintln!("find-max: could not unlink the Redis keys under {key_prefix}: ({e:#}); delete them by hand")
            }
        }
        alive
    }
}

/// Unlinks every key under `prefix:` (SCAN, then UNLINK in batches).
pub async fn unlink_prefix(redis_url: &str, prefix: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url).context("REDIS_URL")?;
    let mut con = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let pattern = format!("{prefix}:*");
    let (mut cursor, mut unlinked) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut con)
            .await
            .context("SCAN")?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut con).await.context("UNLINK")?;
            unlinked += n;
        }
        if next == 0 {
            return Ok(unlinked);
        }
        cursor = next;
    }
}

fn fraction_label(f: f64) -> String {
    if f > 0.0 && f < 1.0 && (1.0 / f - (1.0 / f).round()).abs() < 1e-9 {
        format!("1/{:.0}", 1.0 / f)
    } else {
        format!("{f}")
    }
}

impl FindMaxReport {
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ =
            writeln!(
            out,
            "cache-drop --find-max: origin mode, cold cache per probe, {} certificates, {} arrivals, {} s steps ({}), \
             {} connections, {} generator threads",
            self.certificates, self.arrival, self.step_seconds, self.fractions, self.connections, self.generator_threads
        );
        let _ = writeln!(
            out,
            "pass rule: every step success >= {} and p99 < {} ms; bisection from {:.0} to {:.0} req/s until hi/lo < {}",
            self.rule.min_success, self.rule.max_p99_ms, self.lo, self.hi, self.precision
        );
        let _ = writeln!(
            out,
            "load average (1/5/15 min) at start {}, at end {} (a shared machine: other work takes cores from every probe)",
            self.load_average_start, self.load_average_end
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "probe  full rate F   result  worst success (step)   worst p99 (step)    generator lag p99  load (1 min)"
        );
        for p in &self.probes {
            let _ = writeln!(
                out,
                "{:>5}  {:>8.0} req/s  {:<6}  {:>8.4} ({:>4})         {:>8.1} ms ({:>4})    {:>8.1} ms        {}",
                p.n,
                p.full_rate,
                if p.verdict.passed { "pass" } else { "FAIL" },
                p.verdict.worst_success,
                fraction_label(p.verdict.worst_success_fraction),
                p.verdict.worst_p99_ms,
                fraction_label(p.verdict.worst_p99_fraction),
                p.generator_lag_p99_ms,
                p.load_average_start.split(' ').next().unwrap_or(""),
            );
        }
        let rows: Vec<_> = self
            .probes
            .iter()
            .filter_map(|p| {
                Some((format!("{} at {:.0}/s", p.n, p.full_rate), p.full_step_cpu?, p.full_step_signatures_per_s))
            })
            .collect();
        if !rows.is_empty() {
            let _ = writeln!(out);
            crate::report::cpu_table(&mut out, "probe's full step", &rows);
        }
        let _ = writeln!(out);
        let runs: Vec<String> = self.nginx_runs.iter().map(|r| format!("{:.0}", r.ok_rps)).collect();
        let _ = writeln!(
            out,
            "nginx static file (closed loop, {REFERENCE_CONNECTIONS} connections, this generator): {:.0} req/s (before / after the probes: {})",
            self.nginx_rps,
            runs.join(" / ")
        );
        let f_max = match self.found {
            Found::Below(lo) => format!("below {lo:.0} req/s (the lowest rate tried failed)"),
            Found::At(r) => format!("{r:.0} req/s"),
            Found::AtLeast(r) => format!("at least {r:.0} req/s (no probe failed: raise --hi)"),
        };
        let _ = writeln!(out, "F_max: {f_max}");
        match self.ratio {
            Some(ratio) => {
                let met = if ratio >= self.target_ratio { "met" } else { "NOT met" };
                let _ = writeln!(out, "ratio F_max / nginx: {ratio:.3}x (target >= {}x: {met})", self.target_ratio);
            }
            None => {
                let _ = writeln!(
                    out,
                    "ratio F_max / nginx: below {:.3}x (target >= {}x: NOT met)",
                    self.lo / self.nginx_rps,
                    self.target_ratio
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the bisection against a fake origin that survives exactly the rates up to `limit`.
    fn bisect(lo: f64, hi: f64, precision: f64, limit: f64) -> (Found, Vec<f64>) {
        let mut b = Bisection::new(lo, hi, precision).unwrap();
        let mut tried = Vec::new();
        while let Some(rate) = b.next() {
            assert!(tried.len() < 100, "the bisection does not end");
            tried.push(rate);
            b.record(rate, rate <= limit);
        }
        (b.found(), tried)
    }

    #[test]
    fn bisection_brackets_the_limit_within_the_precision() {
        for limit in [1000.0, 1234.0, 12_345.0, 40_000.0, 50_000.0] {
            let (found, tried) = bisect(1000.0, 60_000.0, 1.1, limit);
            let Found::At(f) = found else { panic!("limit {limit}: {found:?}") };
            assert!(f <= limit && limit < f * 1.1, "limit {limit}: found {f}");
            assert_eq!(tried[0], 1000.0, "the lowest rate is tried first");
            assert!(tried.iter().all(|&r| r < 60_000.0), "the upper bound is never tried: {tried:?}");
            assert!(tried.iter().all(|r| r.fract() == 0.0), "whole requests per second: {tried:?}");
            // ln(60) / ln(1.1) = 43 intervals: 6 halvings of the log range, plus the first probe.
            assert!(tried.len() <= 7, "limit {limit}: {} probes", tried.len());
        }
    }

    #[test]
    fn bisection_reports_a_failing_lower_bound_and_an_unreached_upper_one() {
        let (found, tried) = bisect(1000.0, 60_000.0, 1.1, 500.0);
        assert_eq!((found, tried), (Found::Below(1000.0), vec![1000.0]));
        assert_eq!(found.rate(), None);
        let (found, _) = bisect(1000.0, 60_000.0, 1.1, 1e9);
        let Found::AtLeast(f) = found else { panic!("{found:?}") };
        assert!(f * 1.1 > 60_000.0 && f < 60_000.0, "{f}");
        // Nothing to bisect when the bounds are already within the precision.
        let (found, tried) = bisect(1000.0, 1050.0, 1.1, 1e9);
        assert_eq!((found, tried.len()), (Found::AtLeast(1000.0), 1));
    }

    #[test]
    fn bisection_refuses_bad_bounds() {
        assert!(Bisection::new(0.0, 10.0, 1.1).is_err());
        assert!(Bisection::new(10.0, 10.0, 1.1).is_err());
        assert!(Bisection::new(10.0, 20.0, 1.0).is_err());
        assert!(Bisection::new(10.0, f64::NAN, 1.1).is_err());
    }

    fn step(fraction: f64, requests: u64, success: f64, p99: f64, unverified: u64) -> StepReport {
        StepReport { fraction, requests, success_ratio: success, p99_ms: p99, unverified, ..StepReport::default() }
    }

    #[test]
    fn a_probe_passes_only_if_every_step_meets_the_rule() {
        let rule = Rule { min_success: 0.999, max_p99_ms: 100.0 };
        let good =
            [step(1.0 / 16.0, 100, 1.0, 3.0, 0), step(0.5, 800, 0.9995, 40.0, 0), step(1.0, 1600, 0.999, 99.9, 0)];
        let v = rule.judge(&good);
        assert!(v.passed, "{v:?}");
        assert_eq!((v.worst_success, v.worst_success_fraction), (0.999, 1.0));
        assert_eq!((v.worst_p99_ms, v.worst_p99_fraction), (99.9, 1.0));

        let mut slow = good.clone();
        slow[1].p99_ms = 100.0; // the bound is strict: p99 < 100 ms
        let v = rule.judge(&slow);
        assert!(!v.passed);
        assert_eq!((v.worst_p99_ms, v.worst_p99_fraction), (100.0, 0.5));

        let mut lossy = good.clone();
        lossy[0].success_ratio = 0.998;
        let v = rule.judge(&lossy);
        assert!(!v.passed);
        assert_eq!((v.worst_success, v.worst_success_fraction), (0.998, 1.0 / 16.0));

        let mut wrong = good.clone();
        wrong[2].unverified = 1;
        let v = rule.judge(&wrong);
        assert!(!v.passed && v.unverified == 1, "a wrong answer fails the probe whatever the success ratio");

        let mut empty = good.clone();
        empty[0].requests = 0;
        assert!(!rule.judge(&empty).passed, "a step that sent nothing proves nothing");
        assert!(!rule.judge(&[]).passed);
    }

    #[test]
    fn fraction_labels() {
        assert_eq!(fraction_label(1.0 / 16.0), "1/16");
        assert_eq!(fraction_label(0.5), "1/2");
        assert_eq!(fraction_label(1.0), "1");
        assert_eq!(fraction_label(0.3), "0.3");
    }
}
