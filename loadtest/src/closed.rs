//! Closed-loop load: a fixed set of connections, each sending its next request as soon as it
//! has an answer. Used to warm caches (each request of a list once), for capacity runs and for
//! the benchmark's throughput runs (for a duration). The open-loop scheduler is in [`crate::gen`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _};

use crate::corpus::{Corpus, HashAlg};
use crate::gen::{self, on_threads, Ask, Conn, Ctx, Job, Recorder, Requested};
use crate::report::WarmReport;

/// Requests each of `list` once over `connections` connections, marking GETs in `requested`.
pub async fn each_once(
    ctx: &Arc<Ctx>,
    connections: usize,
    list: Vec<Ask>,
    requested: Option<&Arc<Requested>>,
) -> WarmReport {
    let started = Instant::now();
    let template = Recorder::new(
        started,
        vec![(Duration::ZERO, Duration::from_secs(1 << 30))],
        Duration::from_secs(3600),
        Duration::ZERO,
    );
    let next = AtomicU64::new(0);
    let recorders = on_threads(ctx.threads, |thread| {
        let (list, next, rec) = (&list, &next, RefCell::new(template.empty_like()));
        async move {
            join_all(gen::connections_of(thread, ctx.threads, connections).map(|connection| {
                let rec = &rec;
                async move {
                    let mut conn = Conn::to_origin(connection);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(ask) = list.get(i).copied() else { break };
                        if let (Some(r), Ask::Ocsp { issuer, index, alg, post: false }) = (requested, ask) {
                            r.mark(issuer, index, alg);
                        }
                        let job = Job { intended: Instant::now(), step: 0, ask, check_signature: i % 64 == 0 };
                        let answered = ctx.execute(&mut conn, &job).await;
                        rec.borrow_mut().record(&job, answered);
                    }
                }
            }))
            .await;
            rec.into_inner()
        }
    });
    let rec = merged(template, recorders);
    let s = &rec.steps[0];
    WarmReport {
        requests: list.len() as u64,
        ok: s.ok,
        failed: s.failed() + s.try_later,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// `template` with every thread's recording added.
pub fn merged(mut template: Recorder, recorders: Vec<Recorder>) -> Recorder {
    for r in recorders {
        template.merge(r);
    }
    template
}

/// GETs for the first `count` certificates of every issuer (SHA-1, and SHA-256 too if asked).
pub fn warm_list(corpus: &Corpus, count: u64, sha256: bool) -> Vec<Ask> {
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

/// What each connection asks next.
pub enum Pick {
    /// A fixed path answering `len` bytes.
    Static { len: usize },
    /// Certificates 0..count of a random issuer, uniformly at random.
    Uniform { issuers: u16, count: u64 },
    /// Certificates 0..count of the first issuer in turn, each connection from its own offset
    /// (the hot set, over and over).
    Cycle { count: u64 },
    /// Certificates from..end of the first issuer, each once across all connections (a new
    /// serial per request); running out stops the run and marks it exhausted.
    Walk { next: AtomicU64, end: u64, exhausted: AtomicBool },
}

impl Pick {
    pub fn walk(from: u64, end: u64) -> Pick {
        Pick::Walk { next: AtomicU64::new(from), end, exhausted: AtomicBool::new(false) }
    }

    fn ask(&self, connection: usize, n: u64, rng: &mut rand::rngs::StdRng) -> Option<Ask> {
        let ocsp = |issuer, index| Ask::Ocsp { issuer, index, alg: HashAlg::Sha1, post: false };
        match self {
            Pick::Static { len } => Some(Ask::Static { len: *len }),
            Pick::Uniform { issuers, count } => {
                let issuer = if *issuers > 1 { rng.random_range(0..*issuers) } else { 0 };
                Some(ocsp(issuer, rng.random_range(0..*count)))
            }
            // Offsets 7919 apart so that the connections do not move in lockstep.
            Pick::Cycle { count } => Some(ocsp(0, (connection as u64 * 7919 + n) % count)),
            Pick::Walk { next, end, exhausted } => {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= *end {
                    exhausted.store(true, Ordering::Relaxed);
                    return None;
                }
                Some(ocsp(0, index))
            }
        }
    }

    pub fn exhausted(&self) -> bool {
        matches!(self, Pick::Walk { exhausted, .. } if exhausted.load(Ordering::Relaxed))
    }
}

/// What a closed-loop run saw, from the client's side.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunStats {
    pub seconds: f64,
    /// Every answer, including those completed after the window (at most one per connection).
    pub answered_total: u64,
    /// Answers completed within the run's window.
    pub answered: u64,
    pub ok: u64,
    /// Answers per second within the window.
    pub rps: f64,
    pub ok_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// A walk ran out of certificates before the end (the run is invalid).
    pub exhausted: bool,
    /// CPU the generator process used during the run, in cores, and per answer: what the
    /// client took from the machine it shares with the server.
    pub client_cores: f64,
    pub client_us_per_answer: f64,
    /// Every answer's latency in microseconds, so that runs can be pooled.
    #[serde(skip)]
    pub latency_us: Option<Histogram<u64>>,
}

/// Runs `connections` connections for `duration`, each asking what `pick` says, and checks
/// the signature of one answer in `verify_every` (when the context checks answers fully).
pub async fn run_for(
    ctx: &Arc<Ctx>,
    connections: usize,
    duration: Duration,
    pick: Arc<Pick>,
    verify_every: u64,
) -> RunStats {
    run(ctx, connections, duration, pick, verify_every, None).await
}

/// As [`run_for`], but at `rate` requests a second in all: each connection sends on a fixed
/// schedule (staggered against the others), and a latency counts from the time a request
/// was due, not from when a slow answer to the previous one let it go out, so a stalled
/// server shows in the latencies rather than in a lower rate (no coordinated omission).
pub async fn run_paced(
    ctx: &Arc<Ctx>,
    connections: usize,
    duration: Duration,
    pick: Arc<Pick>,
    verify_every: u64,
    rate: f64,
) -> RunStats {
    let gap = Duration::from_secs_f64(connections.max(1) as f64 / rate.max(1e-3));
    run(ctx, connections, duration, pick, verify_every, Some(gap)).await
}

/// Closed loop, or paced with `gap` between one connection's requests.
async fn run(
    ctx: &Arc<Ctx>,
    connections: usize,
    duration: Duration,
    pick: Arc<Pick>,
    verify_every: u64,
    gap: Option<Duration>,
) -> RunStats {
    let t0 = Instant::now() + Duration::from_millis(200);
    let template =
        Recorder::new(t0, vec![(Duration::ZERO, duration)], Duration::from_secs(1), duration + gen::REQUEST_TIMEOUT);
    let verify_every = verify_every.max(1);
    let end = t0 + duration;
    let cpu_before = gen::process_cpu_seconds();
    let recorders = on_threads(ctx.threads, |thread| {
        let (pick, rec) = (&pick, RefCell::new(template.empty_like()));
        async move {
            tokio::time::sleep_until(t0.into()).await;
            join_all(gen::connections_of(thread, ctx.threads, connections).map(|c| {
                let rec = &rec;
                async move {
                    let mut conn = Conn::to_origin(c);
                    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let intended = match gap {
                            None => Instant::now(),
                            Some(gap) => {
                                let due = t0 + gap.mul_f64(n as f64 + c as f64 / connections as f64);
                                if due >= end {
                                    break;
                                }
                                tokio::time::sleep_until(due.into()).await;
                                due
                            }
                        };
                        let Some(ask) = pick.ask(c, n, &mut rng) else { break };
                        n += 1;
                        let job = Job { intended, step: 0, ask, check_signature: n % verify_every == 0 };
                        let answered = ctx.execute(&mut conn, &job).await;
                        rec.borrow_mut().record(&job, answered);
                    }
                }
            }))
            .await;
            rec.into_inner()
        }
    });
    let cpu = gen::process_cpu_seconds() - cpu_before;
    let rec = merged(template, recorders);
    let st = &rec.steps[0];
    let seconds = duration.as_secs_f64();
    let elapsed = t0.elapsed().as_secs_f64().max(seconds);
    RunStats {
        seconds,
        answered_total: st.answered,
        answered: st.completed_in_window,
        ok: st.ok_in_window,
        rps: st.completed_in_window as f64 / seconds,
        ok_rps: st.ok_in_window as f64 / seconds,
        p50_ms: gen::ms(&st.latency_us, 0.5),
        p99_ms: gen::ms(&st.latency_us, 0.99),
        max_ms: st.latency_us.max() as f64 / 1000.0,
        failed: st.failed(),
        failures: st.failures.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        exhausted: pick.exhausted(),
        client_cores: cpu / elapsed,
        client_us_per_answer: if st.answered > 0 { cpu * 1e6 / st.answered as f64 } else { 0.0 },
        latency_us: Some(st.latency_us.clone()),
    }
}
