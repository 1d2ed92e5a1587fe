//! jitocsp-loadtest: seeds synthetic certificates, replays a CDN cache drop against jitocsp
//! (directly, or through an nginx playing the CDN), and measures capacity. See loadtest/README.md.

mod cdn;
mod corpus;
mod gen;
mod report;
mod scrape;
mod seed;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rand::{Rng as _, SeedableRng as _};

use crate::corpus::{Corpus, HashAlg};
use crate::gen::{Ask, Conn, Ctx, Job, Phase, Recorder, Requested, Sampler, Target};
use crate::report::{MetricsPoint, Report, StepReport, TimelinePoint, WarmReport};
use crate::scrape::Sample;

#[derive(Parser)]
#[command(name = "jitocsp-loadtest", version, about = "Load generator for jitocsp: seed, cache-drop, capacity")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill Postgres with synthetic certificates for issuers already added with `jitocsp admin issuer add`.
    Seed {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Delete the issuers' existing certificates first.
        #[arg(long)]
        replace: bool,
        /// Do nothing for an issuer that already has exactly --count certificates.
        #[arg(long)]
        skip_if_same_count: bool,
    },
    /// Print the GET path (`/` + base64 request) asking about certificate --index of the first issuer.
    PrintPath {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[arg(long, default_value_t = 0)]
        index: u64,
    },
    /// Create the database named in DATABASE_URL if it does not exist.
    CreateDatabase {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Replay a CDN cache drop: 1/16, 1/8, 1/4, 1/2 and all of the traffic reach the origin.
    CacheDrop(Box<CacheDropArgs>),
    /// Closed-loop capacity: every connection sends its next request as soon as it has an answer.
    Capacity(Box<CapacityArgs>),
    /// Check a report.json: every step present with its figures, every answer verified.
    CheckReport {
        report: PathBuf,
        #[arg(long)]
        steps: usize,
        #[arg(long, default_value_t = 0.999)]
        min_success: f64,
    },
}

#[derive(Args, Clone)]
struct CorpusArgs {
    /// NAME=CA_CERT: an issuer's name in jitocsp and its CA certificate (PEM or DER). Repeatable.
    #[arg(long = "issuer")]
    issuers: Vec<String>,
    /// Certificates per issuer.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Share of the certificates that are revoked.
    #[arg(long, default_value_t = 0.05)]
    revoked_share: f64,
    /// Fixes serials and statuses: seed and load must use the same value.
    #[arg(long, default_value_t = 1)]
    corpus_seed: u64,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Where requests go: http://HOST:PORT[/prefix] (loopback only unless --allow-remote).
    #[arg(long)]
    target: String,
    /// The responder's metrics listener, http://HOST:PORT (read for Redis hits, signatures/s, Postgres reads/s).
    #[arg(long)]
    metrics: Option<String>,
    #[arg(long)]
    allow_remote: bool,
    /// Keep-alive connections (each carries one request at a time).
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Generator threads (the scheduler has one more of its own).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Zipf exponent of certificate popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Share of requests sent as POST (the rest are GET).
    #[arg(long, default_value_t = 0.0)]
    post_share: f64,
    /// Share of requests with SHA-256 CertIDs (the rest SHA-1).
    #[arg(long, default_value_t = 0.0)]
    sha256_share: f64,
    /// Check the signature of the first 1000 answers and of one in N after that (every answer's
    /// structure, CertID, status and times are always checked).
    #[arg(long, default_value_t = 64)]
    verify_every: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Mode {
    Origin,
    Cdn,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Arrival {
    Constant,
    Poisson,
}

#[derive(Args)]
struct CacheDropArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Full traffic F (requests/s): origin mode offers F x fraction at each step; cdn mode
    /// offers F to the CDN throughout and purges that fraction of its cache at each step.
    #[arg(long)]
    full_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    step_seconds: f64,
    #[arg(long, default_value = "1/16,1/8,1/4,1/2,1")]
    fractions: String,
    #[arg(long, value_enum, default_value_t = Arrival::Constant)]
    arrival: Arrival,
    /// Before the steps, request each of the first --warm-count certificates once through the
    /// target (origin mode: a warm Redis; cdn mode always warms the CDN).
    #[arg(long)]
    warm: bool,
    #[arg(long)]
    warm_count: Option<u64>,
    /// What to call the responder's Redis in the report (the script starts jitocsp with a fresh
    /// key prefix for a cold one).
    #[arg(long)]
    redis_label: Option<String>,
    /// cdn mode: the nginx proxy_cache_path directory and its levels.
    #[arg(long)]
    nginx_cache_dir: Option<PathBuf>,
    #[arg(long, default_value = "1:2")]
    nginx_levels: String,
    #[arg(long)]
    out: PathBuf,
    /// Refuse schedules of more requests than this.
    #[arg(long, default_value_t = 50_000_000)]
    max_requests: u64,
    /// Refuse schedules longer than this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    max_seconds: f64,
    /// Seed of the request sequence.
    #[arg(long, default_value_t = 7)]
    request_seed: u64,
}

#[derive(Args)]
struct CapacityArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Load a static file at this path (expects HTTP 200 and --static-len bytes) instead of OCSP.
    #[arg(long)]
    static_path: Option<String>,
    #[arg(long)]
    static_len: Option<usize>,
    /// OCSP: warm the first K certificates, then ask about them uniformly (the hot path).
    #[arg(long, default_value_t = 1000)]
    hot_set: u64,
    /// Label in the output.
    #[arg(long, default_value = "capacity")]
    label: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::CacheDrop(a) => a.load.threads,
        Command::Capacity(a) => a.load.threads,
        _ => 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Seed { corpus, database_url, replace, skip_if_same_count } => {
                let corpus = load_corpus(&corpus)?;
                seed::seed(&database_url, &corpus, replace, skip_if_same_count).await
            }
            Command::PrintPath { corpus, index } => {
                let corpus = load_corpus(&corpus)?;
                anyhow::ensure!(index < corpus.count, "--index must be below --count");
                let der = corpus.issuers[0].request(index, HashAlg::Sha1).der;
                println!("{}", gen::get_path("", &der));
                Ok(())
            }
            Command::CreateDatabase { database_url } => seed::create_database(&database_url).await,
            Command::CacheDrop(args) => cache_drop(*args).await,
            Command::Capacity(args) => capacity(*args).await,
            Command::CheckReport { report, steps, min_success } => {
                println!("{}", report::check(&report, steps, min_success)?);
                Ok(())
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = result {
        eprintln!("jitocsp-loadtest: error: {e:#}");
        std::process::exit(1);
    }
}

fn load_corpus(a: &CorpusArgs) -> anyhow::Result<Corpus> {
    Corpus::load(&a.issuers, a.count, a.revoked_share, a.corpus_seed)
}

fn parse_fraction(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let value = match t.split_once('/') {
        Some((a, b)) => a.trim().parse::<f64>()? / b.trim().parse::<f64>()?,
        None => t.parse::<f64>()?,
    };
    if !(value > 0.0 && value <= 1.0) {
        bail!("fraction {t:?} is not in (0, 1]");
    }
    Ok(value)
}

fn check_shares(load: &LoadArgs) -> anyhow::Result<()> {
    for (name, v) in [("--post-share", load.post_share), ("--sha256-share", load.sha256_share)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name} must be between 0 and 1");
        }
    }
    if load.connections == 0 || load.connections > 10_000 {
        bail!("--connections must be between 1 and 10000");
    }
    Ok(())
}

fn metrics_addr(load: &LoadArgs) -> anyhow::Result<Option<SocketAddr>> {
    load.metrics.as_deref().map(|m| Target::parse(m, load.allow_remote).map(|t| t.addr)).transpose()
}

/// Requests each of `list` once, closed loop over `connections` connections; marks them requested.
async fn warm_up(ctx: &Arc<Ctx>, connections: usize, list: Vec<Ask>, requested: &Arc<Requested>) -> WarmReport {
    let started = Instant::now();
    *ctx.recorder.lock().expect("recorder lock") = Recorder::new(
        started,
        vec![(Duration::ZERO, Duration::from_secs(1 << 30))],
        Duration::from_secs(3600),
        Duration::ZERO,
    );
    let list = Arc::new(list);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (ctx, list, next, requested) = (ctx.clone(), list.clone(), next.clone(), requested.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(ask) = list.get(i).copied() else { break };
                if let Ask::Ocsp { issuer, index, alg, post: false } = ask {
                    requested.mark(issuer, index, alg);
                }
                let job = Job { intended: Instant::now(), step: 0, ask, check_signature: i % 64 == 0 };
                ctx.execute(&mut conn, job).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let rec = ctx.recorder.lock().expect("recorder lock");
    let s = &rec.steps[0];
    WarmReport {
        requests: list.len() as u64,
        ok: s.ok,
        failed: s.failed() + s.try_later,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn warm_list(corpus: &Corpus, count: u64, sha256: bool) -> Vec<Ask> {
    let algs: &[HashAlg] = if sha256 { &[HashAlg::Sha1, HashAlg::Sha256] } else { &[HashAlg::Sha1] };
    let mut list = Vec::new();
    for index in 0..count.min(corpus.count) {
        for issuer in 0..corpus.issuers.len() as u16 {
            for alg in algs {
                list.push(Ask::Ocsp { issuer, index, alg: *alg, post: false });
            }
        }
    }
    list
}

/// Samples the responder's counters (and our CPU) at the given offsets from `t0`.
fn spawn_sampler(addr: Option<SocketAddr>, t0: Instant, times: Vec<f64>) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        for t in times {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(t)).into()).await;
            let counters = match addr {
                Some(a) => match scrape::fetch(a).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("metrics: {e:#}");
                        continue;
                    }
                },
                None => scrape::Counters::default(),
            };
            samples.push(Sample { at: t0.elapsed().as_secs_f64(), counters, cpu: gen::process_cpu_seconds() });
        }
        samples
    })
}

fn nearest(samples: &[Sample], t: f64) -> Option<&Sample> {
    samples.iter().min_by(|a, b| (a.at - t).abs().total_cmp(&(b.at - t).abs()))
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn label(fraction: f64) -> String {
    if fraction >= 1.0 {
        return "1".into();
    }
    let inverse = 1.0 / fraction;
    if (inverse - inverse.round()).abs() < 1e-9 {
        format!("1/{}", inverse.round())
    } else {
        format!("{fraction:.3}")
    }
}

async fn cache_drop(args: CacheDropArgs) -> anyhow::Result<()> {
    check_shares(&args.load)?;
    let corpus = Arc::new(load_corpus(&args.corpus)?);
    let target = Target::parse(&args.load.target, args.load.allow_remote)?;
    let metrics = metrics_addr(&args.load)?;
    let fractions = args.fractions.split(',').map(parse_fraction).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!fractions.is_empty(), "--fractions lists no step");
    anyhow::ensure!(args.full_rate > 0.0 && args.full_rate <= 1e6, "--full-rate must be in (0, 1000000]");
    anyhow::ensure!(args.step_seconds >= 0.5, "--step-seconds must be at least 0.5");
    let step = Duration::from_secs_f64(args.step_seconds);
    let rates: Vec<f64> =
        fractions.iter().map(|f| if args.mode == Mode::Origin { args.full_rate * f } else { args.full_rate }).collect();
    let planned: f64 = rates.iter().map(|r| r * args.step_seconds).sum();
    let total_seconds = args.step_seconds * fractions.len() as f64;
    if planned > args.max_requests as f64 {
        bail!("the schedule has {planned:.0} requests, over --max-requests {}", args.max_requests);
    }
    if total_seconds > args.max_seconds {
        bail!("the schedule lasts {total_seconds} s, over --max-seconds {}", args.max_seconds);
    }
    let cdn_cache = match args.mode {
        Mode::Cdn => {
            let dir = args.nginx_cache_dir.clone().context("--mode cdn needs --nginx-cache-dir")?;
            anyhow::ensure!(dir.is_dir(), "--nginx-cache-dir {}: not a directory", dir.display());
            Some((dir, cdn::parse_levels(&args.nginx_levels)?))
        }
        Mode::Origin => None,
    };
    let requested = Arc::new(Requested::new(corpus.issuers.len(), corpus.count));
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        corpus: corpus.clone(),
        recorder: Mutex::new(Recorder::new(Instant::now(), vec![], Duration::from_secs(1), Duration::ZERO)),
        static_path: String::new(),
    });

    let warm = if args.warm || args.mode == Mode::Cdn {
        let count = args.warm_count.unwrap_or(corpus.count);
        let list = warm_list(&corpus, count, args.load.sha256_share > 0.0);
        eprintln!("warming: {} requests through {}", list.len(), args.load.target);
        let w = warm_up(&ctx, args.load.connections.min(64), list, &requested).await;
        eprintln!("warm-up done: {} ok, {} failed, {:.1} s", w.ok, w.failed, w.seconds);
        if let Some((dir, levels)) = &cdn_cache {
            // Prove the purge computes the paths nginx uses: the most popular URL must be cached.
            let iss = &corpus.issuers[0];
            let uri = gen::get_path(&target.prefix, &iss.request(0, HashAlg::Sha1).der);
            let file = cdn::cache_file(dir, levels, &cdn::cache_key(&uri));
            anyhow::ensure!(
                file.is_file(),
                "after warming, nginx has no cache file {} for {uri}: wrong --nginx-cache-dir, levels or key",
                file.display()
            );
        }
        Some(w)
    } else {
        None
    };

    let load_average_start = report::load_average();
    let settle = Duration::from_millis(500);
    let t0 = Instant::now() + settle;
    let windows: Vec<(Duration, Duration)> = (0..fractions.len()).map(|k| (step * k as u32, step)).collect();
    let run = step * fractions.len() as u32;
    let bucket = Duration::from_secs_f64((run.as_secs_f64() / 300.0).max(0.25));
    let drain = gen::REQUEST_TIMEOUT + Duration::from_secs(2);
    *ctx.recorder.lock().expect("recorder lock") = Recorder::new(t0, windows.clone(), bucket, run + drain);

    let backlog = ((args.full_rate * 5.0) as usize).max(10_000);
    let (tx, rx) = async_channel::bounded::<Job>(backlog);
    let mut workers = Vec::new();
    for _ in 0..args.load.connections {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new();
            while let Ok(job) = rx.recv().await {
                ctx.execute(&mut conn, job).await;
            }
        }));
    }
    drop(rx);

    let mut times: Vec<f64> = (0..=run.as_secs_f64().ceil() as u64 + 1).map(|s| s as f64).collect();
    times.extend(windows.iter().map(|(s, _)| s.as_secs_f64()));
    times.push(run.as_secs_f64());
    times.sort_by(f64::total_cmp);
    times.dedup_by(|a, b| (*a - *b).abs() < 0.05);
    let sampler_task = spawn_sampler(metrics, t0, times);

    let purges: Arc<Mutex<Vec<(usize, cdn::PurgeResult)>>> = Arc::default();
    let phases: Vec<Phase> = fractions
        .iter()
        .enumerate()
        .map(|(k, fraction)| {
            let on_start: Option<Box<dyn FnOnce() + Send>> = cdn_cache.clone().map(|(dir, levels)| {
                let (corpus, requested, purges, prefix, fraction) =
                    (corpus.clone(), requested.clone(), purges.clone(), target.prefix.clone(), *fraction);
                Box::new(move || {
                    let r = cdn::purge(&dir, &levels, &prefix, &corpus, &requested, fraction);
                    purges.lock().expect("purges lock").push((k, r));
                }) as Box<dyn FnOnce() + Send>
            });
            Phase { rate: rates[k], start: windows[k].0, duration: step, on_start }
        })
        .collect();
    let sampler = Sampler::new(
        &corpus,
        args.load.zipf,
        args.load.post_share,
        args.load.sha256_share,
        args.load.verify_every,
        args.request_seed,
    )?;
    eprintln!(
        "cache-drop {:?}: {} steps of {} s, rates {:?} req/s -> {}",
        args.mode,
        fractions.len(),
        args.step_seconds,
        rates,
        args.load.target
    );
    let (sched_ctx, sched_requested) = (ctx.clone(), requested.clone());
    let plan = gen::Plan { phases, t0, poisson: args.arrival == Arrival::Poisson, max_requests: args.max_requests };
    let scheduler = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || gen::schedule(plan, sampler, tx, &sched_ctx, Some(&sched_requested)))
        .context("starting the scheduler thread")?;
    let sched = tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow!("the scheduler thread panicked"))?;

    let load_average_end = report::load_average();
    let deadline = tokio::time::Instant::now() + drain;
    for w in &mut workers {
        if tokio::time::timeout_at(deadline, &mut *w).await.is_err() {
            w.abort();
        }
    }
    let samples = sampler_task.await.unwrap_or_default();
    let purges = std::mem::take(&mut *purges.lock().expect("purges lock"));

    let rec = ctx.recorder.lock().expect("recorder lock");
    let mut steps = Vec::new();
    for (k, fraction) in fractions.iter().enumerate() {
        let st = &rec.steps[k];
        let (start, len) = (windows[k].0.as_secs_f64(), windows[k].1.as_secs_f64());
        let mut failures: std::collections::BTreeMap<String, u64> =
            st.failures.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let no_answer: u64 = st.failures.iter().filter(|(k, _)| k.starts_with("no answer:")).map(|(_, v)| v).sum();
        let unanswered = st.scheduled.saturating_sub(st.answered + no_answer + st.backlog_dropped);
        if unanswered > 0 {
            failures.insert("no answer: run ended".into(), unanswered);
        }
        let unverified: u64 = st
            .failures
            .iter()
            .filter(|(k, _)| !k.starts_with("no answer:") && **k != "generator backlog full")
            .map(|(_, v)| v)
            .sum();
        let d = match (nearest(&samples, start), nearest(&samples, start + len)) {
            (Some(a), Some(b)) if b.at > a.at => scrape::delta(a, b),
            _ => scrape::Delta::default(),
        };
        let cdn_total: u64 = st.cdn.values().sum();
        let lag = &sched.lag_us[k];
        steps.push(StepReport {
            step: k,
            fraction: *fraction,
            label: label(*fraction),
            start_s: start,
            duration_s: len,
            offered_rps: st.scheduled as f64 / len,
            achieved_rps: st.completed_in_window as f64 / len,
            ok_rps: st.ok_in_window as f64 / len,
            success_ratio: if st.scheduled > 0 { st.ok as f64 / st.scheduled as f64 } else { 0.0 },
            requests: st.scheduled,
            answered: st.answered,
            ok: st.ok,
            good: st.good,
            revoked: st.revoked,
            try_later: st.try_later,
            failed: failures.values().sum(),
            failures,
            unverified,
            signatures_checked: st.signatures_checked,
            post_requests: st.post,
            p50_ms: ms(&st.latency_us, 0.5),
            p90_ms: ms(&st.latency_us, 0.9),
            p99_ms: ms(&st.latency_us, 0.99),
            p999_ms: ms(&st.latency_us, 0.999),
            max_ms: st.latency_us.max() as f64 / 1000.0,
            redis_hit_ratio: d.redis_hit_ratio,
            signatures_per_s: d.signatures_per_s,
            db_reads_per_s: d.db_reads_per_s,
            origin_rps: d.origin_rps,
            origin_try_later: d.origin_try_later,
            cdn_hit_ratio: (cdn_total > 0).then(|| *st.cdn.get("HIT").unwrap_or(&0) as f64 / cdn_total as f64),
            cdn_statuses: st.cdn.clone(),
            purge: purges.iter().find(|(i, _)| *i == k).map(|(_, r)| *r),
            generator_lag_p99_ms: ms(lag, 0.99),
            generator_lag_max_ms: lag.max() as f64 / 1000.0,
            generator_cpu_cores: d.generator_cpu,
        });
    }
    let w = rec.bucket_width.as_secs_f64();
    let last = rec.buckets.iter().rposition(|b| b.scheduled > 0 || b.answered > 0).map_or(0, |i| i + 1);
    let timeline = rec.buckets[..last]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let q = |q: f64| (b.answered > 0).then(|| b.latency_us.value_at_quantile(q) as f64 / 1000.0);
            TimelinePoint {
                t: (i as f64 + 0.5) * w,
                offered_rps: b.scheduled as f64 / w,
                achieved_rps: b.answered as f64 / w,
                ok_rps: b.ok as f64 / w,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                max_ms: (b.answered > 0).then(|| b.latency_us.max() as f64 / 1000.0),
            }
        })
        .collect();
    drop(rec);
    let metrics_points = if metrics.is_some() {
        samples
            .windows(2)
            .filter(|p| p[1].at <= run.as_secs_f64() + 0.5)
            .map(|p| {
                let d = scrape::delta(&p[0], &p[1]);
                MetricsPoint {
                    t: (p[0].at + p[1].at) / 2.0,
                    signatures_per_s: d.signatures_per_s,
                    origin_rps: d.origin_rps,
                    redis_hit_ratio: d.redis_hit_ratio,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let sum = |f: fn(&StepReport) -> u64| steps.iter().map(f).sum::<u64>();
    let report = Report {
        mode: format!("{:?}", args.mode).to_lowercase(),
        target: args.load.target.clone(),
        full_rate: args.full_rate,
        step_seconds: args.step_seconds,
        arrival: format!("{:?}", args.arrival).to_lowercase(),
        redis: args.redis_label.clone().unwrap_or_else(|| if warm.is_some() { "warm".into() } else { "cold".into() }),
        certificates_per_issuer: corpus.count,
        issuers: corpus.issuers.iter().map(|i| i.name.clone()).collect(),
        revoked_share: args.corpus.revoked_share,
        zipf_exponent: args.load.zipf,
        post_share: args.load.post_share,
        sha256_share: args.load.sha256_share,
        connections: args.load.connections,
        load_average_start,
        load_average_end,
        warm,
        total_requests: sum(|s| s.requests),
        total_ok: sum(|s| s.ok),
        total_try_later: sum(|s| s.try_later),
        total_failed: sum(|s| s.failed),
        total_unverified: sum(|s| s.unverified),
        all_answers_verified: steps.iter().all(|s| s.unverified == 0),
        steps,
        timeline,
        metrics: metrics_points,
    };
    report::write_all(&report, &args.out)?;
    print!("{}", report::text(&report));
    eprintln!("wrote {}/report.json, report.txt, report.svg", args.out.display());
    Ok(())
}

async fn capacity(args: CapacityArgs) -> anyhow::Result<()> {
    check_shares(&args.load)?;
    let target = Target::parse(&args.load.target, args.load.allow_remote)?;
    let metrics = metrics_addr(&args.load)?;
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= 600.0, "--seconds must be in (0, 600]");
    let corpus = match &args.static_path {
        Some(_) => None,
        None => Some(Arc::new(load_corpus(&args.corpus)?)),
    };
    let static_len = match &args.static_path {
        Some(_) => Some(args.static_len.context("--static-path needs --static-len")?),
        None => None,
    };
    // A static run needs no corpus; give the context an empty-but-valid one.
    let ctx_corpus = match &corpus {
        Some(c) => c.clone(),
        None => Arc::new(placeholder_corpus()?),
    };
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        corpus: ctx_corpus.clone(),
        recorder: Mutex::new(Recorder::new(Instant::now(), vec![], Duration::from_secs(1), Duration::ZERO)),
        static_path: args.static_path.clone().map(|p| format!("{}{p}", target.prefix)).unwrap_or_default(),
    });
    let hot = args.hot_set.clamp(1, ctx_corpus.count);
    if corpus.is_some() {
        let requested = Arc::new(Requested::new(ctx_corpus.issuers.len(), ctx_corpus.count));
        let w = warm_up(&ctx, args.load.connections.min(64), warm_list(&ctx_corpus, hot, false), &requested).await;
        eprintln!("warmed {} certificates: {} ok, {} failed", w.requests, w.ok, w.failed);
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let t0 = Instant::now() + Duration::from_millis(200);
    *ctx.recorder.lock().expect("recorder lock") =
        Recorder::new(t0, vec![(Duration::ZERO, duration)], Duration::from_secs(1), duration + gen::REQUEST_TIMEOUT);
    let sampler_task = spawn_sampler(metrics, t0, vec![0.0, args.seconds]);
    let mut tasks = Vec::new();
    let issuers = ctx_corpus.issuers.len() as u16;
    for c in 0..args.load.connections {
        let ctx = ctx.clone();
        let verify_every = args.load.verify_every.max(1);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            tokio::time::sleep_until(t0.into()).await;
            let end = t0 + duration;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let ask = match static_len {
                    Some(len) => Ask::Static { len },
                    None => Ask::Ocsp {
                        issuer: if issuers > 1 { rng.random_range(0..issuers) } else { 0 },
                        index: rng.random_range(0..hot),
                        alg: HashAlg::Sha1,
                        post: false,
                    },
                };
                let job = Job { intended: Instant::now(), step: 0, ask, check_signature: n % verify_every == 0 };
                ctx.execute(&mut conn, job).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let samples = sampler_task.await.unwrap_or_default();
    let d = match samples.as_slice() {
        [a, b, ..] => scrape::delta(a, b),
        _ => scrape::Delta::default(),
    };
    let rec = ctx.recorder.lock().expect("recorder lock");
    let st = &rec.steps[0];
    let result = serde_json::json!({
        "label": args.label,
        "target": args.load.target,
        "static_path": args.static_path,
        "seconds": args.seconds,
        "connections": args.load.connections,
        "requests": st.scheduled.max(st.answered),
        "answered": st.answered,
        "ok": st.ok,
        "failed": st.failed(),
        "failures": st.failures,
        "rps": st.completed_in_window as f64 / args.seconds,
        "ok_rps": st.ok_in_window as f64 / args.seconds,
        "p50_ms": ms(&st.latency_us, 0.5),
        "p99_ms": ms(&st.latency_us, 0.99),
        "max_ms": st.latency_us.max() as f64 / 1000.0,
        "redis_hit_ratio": d.redis_hit_ratio,
        "signatures_per_s": d.signatures_per_s,
        "generator_cpu_cores": d.generator_cpu,
    });
    println!(
        "{}: {:.0} answers/s ({:.0} ok/s), p50 {:.2} ms, p99 {:.2} ms, {} failed, generator {:.2} cores",
        args.label,
        result["rps"].as_f64().unwrap_or(0.0),
        result["ok_rps"].as_f64().unwrap_or(0.0),
        result["p50_ms"].as_f64().unwrap_or(0.0),
        result["p99_ms"].as_f64().unwrap_or(0.0),
        st.failed(),
        d.generator_cpu
    );
    if let Some(path) = &args.out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{result}")?;
    }
    anyhow::ensure!(st.failed() == 0, "{} requests failed: {:?}", st.failed(), st.failures);
    Ok(())
}

/// A corpus with one made-up issuer, for static-file runs that never build an OCSP request.
fn placeholder_corpus() -> anyhow::Result<Corpus> {
    let hashes = jitocsp::x509::CertIdHashes {
        name_sha1: [0; 20],
        key_sha1: [0; 20],
        name_sha256: [0; 32],
        key_sha256: [0; 32],
    };
    let key = p256::ecdsa::SigningKey::from_slice(&[1u8; 32]).map_err(|_| anyhow!("placeholder key"))?;
    Corpus::new(vec![corpus::Issuer::new("static", hashes, *key.verifying_key(), 0, 0)], 1, 0.0, 0)
}
