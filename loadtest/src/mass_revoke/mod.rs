//! `mass-revoke`: a bulk-revocation incident replayed against a running responder, the way
//! Let's Encrypt had to revoke ~3 million certificates in 2020. loadtest/mass-revoke.sh
//! prepares a fresh issuer and calls this; this
//!
//! 1. seeds `--count` certificates (status good) and starts `jitocsp serve` with the CDN
//!    purge hook pointed at a local [`sink`] (a stand-in CDN API that refuses some calls);
//! 2. warms the hot set (certificates `0..hot`) and a sample of the certificates about to be
//!    revoked, so those are cached in Redis and in the responder before the revocation;
//! 3. measures the hot path (closed loop) before, *during* one
//!    `jitocsp admin revoke --serials-file` of `--revoke` certificates (`hot..hot+revoke`),
//!    and after, with the responder's RSS sampled throughout;
//! 4. waits for the purge hook to have named every revoked certificate to the sink;
//! 5. verifies (signature included) that the sampled revoked certificates are answered
//!    revoked and the hot ones still good.
//!
//! Every figure is a measurement, never a pass/fail threshold; the run fails (exit 1) only if
//! something did not work: a wrong or unverified answer, the revocation failing, or purges
//! not drained within `--drain-timeout`.

mod sink;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::bench::procs::{self, JitocspSpec};
use crate::closed::{self, Pick, RunStats};
use crate::corpus::{Corpus, HashAlg, Status};
use crate::gen::{get_path, now_generalized, Ask, Ctx, Target};
use crate::verify::{judge, Verdict};

#[derive(clap::Args)]
pub struct MassRevokeArgs {
    #[command(flatten)]
    pub run: crate::cli::RunArgs,
    /// Certificates imported.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Certificates revoked in one `admin revoke` (`hot..hot+revoke`).
    #[arg(long, default_value_t = 50_000)]
    pub revoke: u64,
    /// The hot set, served under load throughout (`0..hot`, never revoked).
    #[arg(long, default_value_t = 10_000)]
    pub hot: u64,
    /// Revoked certificates cached before the revocation and verified revoked after it.
    #[arg(long, default_value_t = 200)]
    pub sample: u64,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// The hot path's load, in requests a second, paced: each latency counts from when its
    /// request was due, so the figures are what a client sending this rate sees. 0: a closed
    /// loop (every connection as fast as it gets answers), whose latencies only say how much
    /// of the machine the responder got.
    #[arg(long, default_value_t = 10_000.0)]
    pub hot_rate: f64,
    /// Seconds of hot-path load before and after the revocation.
    #[arg(long, default_value_t = 5)]
    pub baseline_seconds: u64,
    /// The sink answers every n-th hook call 503 (0: never), so retries are measured.
    #[arg(long, default_value_t = 20)]
    pub refuse_every: u64,
    /// Longest wait, after the revocation, for the hook to have named every revoked certificate.
    #[arg(long, default_value_t = 600)]
    pub drain_timeout: u64,
    #[arg(long, default_value = "keyCompromise")]
    pub reason: String,
    /// JITOCSP_SERVER_WORKERS.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs (a `taskset -c` list) for `admin revoke`, when the database side of the machine
    /// is kept apart from the responder's (`mass-revoke.sh --split-cpus`).
    #[arg(long)]
    pub admin_cpus: Option<String>,
    #[arg(long, default_value = "unknown")]
    pub git: String,
}

/// Hot-path load in slices of this length while the revocation runs.
const SLICE: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Report {
    stamp: String,
    git: String,
    cores: usize,
    count: u64,
    revoke: u64,
    hot: u64,
    hot_rate: f64,
    /// The CPUs of the database side, when kept apart (`--admin-cpus`).
    database_cpus: Option<String>,
    seed_seconds: f64,
    revoke_seconds: f64,
    revoke_per_second: f64,
    admin_summary: String,
    rss_kib: Rss,
    hot_before: RunStats,
    /// One closed-loop run per slice while `admin revoke` ran.
    hot_during: Vec<RunStats>,
    hot_after: RunStats,
    hook: Hook,
    revoked_verified: u64,
    good_verified: u64,
    problems: Vec<String>,
    ok: bool,
}

#[derive(Serialize, Default)]
struct Rss {
    before: u64,
    peak_during: u64,
    after_revoke: u64,
    end: u64,
}

#[derive(Serialize, Default)]
struct Hook {
    calls: u64,
    refused_on_purpose: u64,
    distinct_certificates: u64,
    /// From the start of `admin revoke` to the last certificate named; None if not drained.
    drained_after_seconds: Option<f64>,
}

pub async fn run(a: MassRevokeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.revoke >= 1 && a.hot >= 1, "--revoke and --hot must be at least 1");
    anyhow::ensure!(a.hot + a.revoke <= a.count, "--hot + --revoke must not exceed --count");
    anyhow::ensure!(a.sample <= a.revoke, "--sample must not exceed --revoke");
    std::fs::create_dir_all(&a.run.work)?;
    let corpus = Arc::new(Corpus::load(std::slice::from_ref(&a.run.issuer), a.count, 0.0, 1)?);
    let issuer = &corpus.issuers[0];
    let mut problems = Vec::new();

    eprintln!("mass-revoke: seeding {} certificates", a.count);
    let started = Instant::now();
    crate::seed::seed(&a.run.database_url, &corpus, true, false).await?;
    let seed_seconds = started.elapsed().as_secs_f64();

    let sink = sink::Sink::start(&issuer.name, a.refuse_every)?;
    let hook_env = [
        ("JITOCSP_CDN_PURGE_URL".to_owned(), format!("http://{}/purge", sink.addr)),
        ("JITOCSP_CDN_BASE_URL".to_owned(), "http://ocsp.example.test".to_owned()),
    ];
    let spec = JitocspSpec { run: &a.run, workers: a.workers, backend: "ring", env: &hook_env };
    let (mut server, listen, _metrics) = tokio::task::block_in_place(|| procs::jitocsp(&spec, "mass-revoke", 65_536))?;
    let ctx = Arc::new(Ctx::new(Target::at(listen), corpus.clone(), a.threads));
    let revoked = a.hot..a.hot + a.revoke;
    let sample: Vec<u64> = (0..a.sample).map(|i| revoked.start + i * a.revoke / a.sample.max(1)).collect();

    let mut warm = closed::warm_list(&corpus, a.hot, false);
    warm.extend(sample.iter().map(|&index| Ask::Ocsp { issuer: 0, index, alg: HashAlg::Sha1, post: false }));
    let w = closed::each_once(&ctx, a.connections, warm, None).await;
    eprintln!("mass-revoke: warmed {} certificates in {:.1} s", w.requests, w.seconds);
    anyhow::ensure!(w.failed == 0, "{} of the warm-up requests failed", w.failed);

    let pid = server.pid();
    let hot = || Arc::new(Pick::Cycle { count: a.hot });
    let baseline = Duration::from_secs(a.baseline_seconds);
    let mut rss = Rss { before: rss_kib(pid), ..Rss::default() };
    let (hot_rate, connections) = (a.hot_rate, a.connections);
    let load = |duration| {
        let (ctx, pick) = (ctx.clone(), hot());
        async move {
            if hot_rate > 0.0 {
                closed::run_paced(&ctx, connections, duration, pick, 64, hot_rate).await
            } else {
                closed::run_for(&ctx, connections, duration, pick, 64).await
            }
        }
    };
    let hot_before = load(baseline).await;
    eprintln!("mass-revoke: hot path before: {}", line(&hot_before));

    let serials = a.run.work.join("serials.txt");
    write_serials(&serials, &corpus, revoked.clone())?;
    eprintln!("mass-revoke: revoking {} certificates in one admin revoke", a.revoke);
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_rss_sampler(pid, peak.clone(), stop.clone());
    let revoke_started = Instant::now();
    let admin = {
        let mut command = match &a.admin_cpus {
            Some(cpus) => {
                let mut pinned = Command::new("taskset");
                pinned.args(["-c", cpus]).arg(&a.run.jitocsp);
                pinned
            }
            None => Command::new(&a.run.jitocsp),
        };
        command
            .args(["admin", "revoke", "--issuer", &issuer.name, "--reason", &a.reason, "--serials-file"])
            .arg(&serials)
            .env("DATABASE_URL", &a.run.database_url)
            .env("REDIS_URL", &a.run.redis_url)
            .env("JITOCSP_CACHE_KEY_PREFIX", &a.run.key_prefix)
            .envs(hook_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(a.run.work.join("admin-revoke.out"))?)
            .stderr(std::fs::File::create(a.run.work.join("admin-revoke.log"))?);
        tokio::task::spawn_blocking(move || command.status())
    };
    let mut hot_during = Vec::new();
    while !admin.is_finished() {
        let stats = load(SLICE).await;
        eprintln!("mass-revoke: hot path during: {}", line(&stats));
        hot_during.push(stats);
    }
    let status = admin.await?.context("running jitocsp admin revoke")?;
    let revoke_seconds = revoke_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    rss.peak_during = peak.load(Ordering::Relaxed);
    rss.after_revoke = rss_kib(pid);
    // A line per certificate, then the summary lines: keep the last few.
    let printed = std::fs::read_to_string(a.run.work.join("admin-revoke.out")).unwrap_or_default();
    let mut tail: Vec<&str> = printed.lines().rev().take(3).collect();
    tail.reverse();
    let admin_summary = tail.join("; ");
    if !status.success() {
        problems.push(format!("admin revoke failed ({status}); see {}", a.run.work.join("admin-revoke.log").display()));
    }
    eprintln!("mass-revoke: revoked in {revoke_seconds:.1} s: {admin_summary}");

    let hot_after = load(baseline).await;
    eprintln!("mass-revoke: hot path after: {}", line(&hot_after));
    for (when, stats) in std::iter::once(("before", &hot_before))
        .chain(hot_during.iter().map(|s| ("during", s)))
        .chain(std::iter::once(("after", &hot_after)))
    {
        if stats.failed > 0 {
            problems.push(format!("hot path {when}: {} answers failed: {:?}", stats.failed, stats.failures));
        }
    }

    let hook = drain(&sink, a.revoke, revoke_started, Duration::from_secs(a.drain_timeout)).await;
    if hook.drained_after_seconds.is_none() {
        problems.push(format!(
            "the purge hook named {} of {} revoked certificates within {} s",
            hook.distinct_certificates, a.revoke, a.drain_timeout
        ));
    }
    rss.end = rss_kib(pid);

    let revoked_verified = verify(&corpus, listen, &sample, Status::Revoked, &mut problems);
    let good: Vec<u64> = (0..a.sample.min(a.hot)).collect();
    let good_verified = verify(&corpus, listen, &good, Status::Good, &mut problems);
    if !server.alive() {
        problems.push("jitocsp serve exited during the run".to_owned());
    }
    drop(server);

    let report = Report {
        stamp: chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        git: a.git.clone(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        count: a.count,
        revoke: a.revoke,
        hot: a.hot,
        hot_rate: a.hot_rate,
        database_cpus: a.admin_cpus.clone(),
        seed_seconds,
        revoke_seconds,
        revoke_per_second: a.revoke as f64 / revoke_seconds,
        admin_summary,
        rss_kib: rss,
        hot_before,
        hot_during,
        hot_after,
        hook,
        revoked_verified,
        good_verified,
        ok: problems.is_empty(),
        problems,
    };
    let text = text(&report);
    crate::report::write_json_and_text(&a.run.out, &report, &text)?;
    print!("{text}");
    anyhow::ensure!(report.ok, "something did not work (PROBLEM lines above)");
    Ok(())
}

fn write_serials(path: &std::path::Path, corpus: &Corpus, indices: std::ops::Range<u64>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for index in indices {
        for octet in corpus.issuers[0].serial(index) {
            write!(out, "{octet:02x}")?;
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// VmRSS of `pid` in KiB (0 if it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn spawn_rss_sampler(pid: u32, peak: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Waits until the sink has been told of `expected` distinct certificates, or `timeout`.
async fn drain(sink: &sink::Sink, expected: u64, since: Instant, timeout: Duration) -> Hook {
    let deadline = Instant::now() + timeout;
    loop {
        let hook = {
            let seen = sink.seen.lock().unwrap_or_else(|p| p.into_inner());
            let drained = seen.tags.len() as u64 >= expected;
            Hook {
                calls: seen.calls,
                refused_on_purpose: seen.refused,
                distinct_certificates: seen.tags.len() as u64,
                drained_after_seconds: seen
                    .last_new_tag
                    .filter(|_| drained)
                    .map(|at| at.saturating_duration_since(since).as_secs_f64()),
            }
        };
        if hook.drained_after_seconds.is_some() || Instant::now() >= deadline {
            return hook;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// GETs each certificate once and checks the answer fully (signature included) against
/// `expected`; returns how many were right, and names the first few that were not.
fn verify(corpus: &Corpus, addr: SocketAddr, indices: &[u64], expected: Status, problems: &mut Vec<String>) -> u64 {
    let issuer = &corpus.issuers[0];
    let mut right = 0;
    for &index in indices {
        let ask = issuer.request(index, HashAlg::Sha1);
        let verdict = match procs::http_get(addr, &get_path("", &ask.der)) {
            Ok((200, _, body)) => judge(&body, &ask.cert_id, expected, &now_generalized(), Some(&issuer.key)),
            Ok(_) => Verdict::Fail("HTTP status not 200"),
            Err(_) => Verdict::Fail("no answer"),
        };
        match verdict {
            Verdict::Ok(_) => right += 1,
            other if problems.len() < 20 => {
                problems.push(format!("certificate {index}: expected {expected:?}, got {other:?}"));
            }
            _ => {}
        }
    }
    right
}

fn line(s: &RunStats) -> String {
    format!(
        "{:.0} answers/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} failed",
        s.rps, s.p50_ms, s.p99_ms, s.max_ms, s.failed
    )
}

fn text(r: &Report) -> String {
    let mut t = String::new();
    let worst = r.hot_during.iter().map(|s| s.p99_ms).fold(0.0, f64::max);
    let pooled = pooled_p99_ms(&r.hot_during);
    let _ = writeln!(t, "mass revocation, {} ({} cores, git {})", r.stamp, r.cores, r.git);
    let _ = writeln!(t, "  certificates {}, revoked {} in one admin revoke, hot set {}", r.count, r.revoke, r.hot);
    if let Some(cpus) = &r.database_cpus {
        let _ =
            writeln!(t, "  Postgres and admin revoke on CPUs {cpus}; the responder, generator and Redis on the others");
    }
    let _ = writeln!(
        t,
        "  revoke: {:.1} s ({:.0} revocations/s); admin said: {}",
        r.revoke_seconds, r.revoke_per_second, r.admin_summary
    );
    let _ = writeln!(
        t,
        "  responder RSS (MiB): before {:.1}, peak during {:.1}, after the revoke {:.1}, at the end {:.1}",
        mib(r.rss_kib.before),
        mib(r.rss_kib.peak_during),
        mib(r.rss_kib.after_revoke),
        mib(r.rss_kib.end)
    );
    let load = if r.hot_rate > 0.0 {
        format!("{:.0} requests/s paced, latency from when each was due", r.hot_rate)
    } else {
        "closed loop".to_owned()
    };
    let _ = writeln!(t, "  hot path ({load}):");
    let _ = writeln!(t, "    before: {}", line(&r.hot_before));
    let _ = writeln!(
        t,
        "    during ({} slices of {} s): {:.0} answers/s, p99 {pooled:.2} ms (worst slice {worst:.2} ms), {} failed",
        r.hot_during.len(),
        SLICE.as_secs(),
        r.hot_during.iter().map(|s| s.rps).sum::<f64>() / r.hot_during.len().max(1) as f64,
        r.hot_during.iter().map(|s| s.failed).sum::<u64>()
    );
    let _ = writeln!(t, "    after:  {}", line(&r.hot_after));
    let ratio = |p99: f64| p99 / r.hot_before.p99_ms.max(1e-9);
    let _ = writeln!(
        t,
        "    p99 against before: during {:.2}x, after {:.2}x (goal <= 1.5x)",
        ratio(pooled),
        ratio(r.hot_after.p99_ms)
    );
    let drained = r
        .hook
        .drained_after_seconds
        .map_or("NOT drained".to_owned(), |s| format!("drained {s:.1} s after the revoke started"));
    let _ = writeln!(
        t,
        "  CDN hook: {} calls ({} refused on purpose and retried) named {} certificates; {drained}",
        r.hook.calls, r.hook.refused_on_purpose, r.hook.distinct_certificates
    );
    let _ = writeln!(
        t,
        "  verified (signature, CertID, status, times): {} revoked, {} good",
        r.revoked_verified, r.good_verified
    );
    for p in &r.problems {
        let _ = writeln!(t, "PROBLEM: {p}");
    }
    t
}

/// The p99 of every answer of the runs together (not a p99 of p99s).
fn pooled_p99_ms(runs: &[RunStats]) -> f64 {
    let mut all = crate::gen::new_histogram();
    for histogram in runs.iter().filter_map(|run| run.latency_us.as_ref()) {
        let _ = all.add(histogram);
    }
    crate::gen::ms(&all, 0.99)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
