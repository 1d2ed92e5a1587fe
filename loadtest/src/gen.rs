//! The load generator's connections: a fixed set of keep-alive HTTP/1.1 connections (each to
//! one origin), each driven by one task, and the [`Recorder`] every answer is judged into.
//!
//! The connections run on [`on_threads`]: `--threads` OS threads, each with a single-threaded
//! runtime of its own that drives its share of the connections and records into a recorder of
//! its own; the recorders are merged when the run is over. Nothing is shared between the
//! threads while requests fly (no lock, no cross-thread wake-up), which is what lets the
//! generator keep up with nginx on the machine it shares with the server (docs/benchmarks.md,
//! "The client").
//!
//! Open loop: [`crate::schedule`] computes each request's *intended* send time from the
//! arrival process alone and hands the request to whichever connection is free; latency is
//! measured here from that intended time, so time spent waiting for a busy server (or for a
//! free connection) is counted, not hidden (no coordinated omission). The scheduler also
//! records its own lag (how late it handed each request over); together with the generator's
//! CPU use this tells a saturated generator from a slow server.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use hdrhistogram::Histogram;

use crate::corpus::{Corpus, HashAlg, Status};
use crate::verify::{generalized_time, judge, Verdict};
use crate::wire::{Failure, Wire};

/// Requests that take longer than this are failures ("timeout"): the CA/B Forum limit (BR 4.10.2).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the load goes: an HTTP origin given by the user.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub prefix: String,
}

impl Target {
    /// Parses `http://HOST:PORT[/prefix]`. Only loopback addresses unless `allow_remote`.
    pub fn parse(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: only http:// targets are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("{url}: cannot resolve {authority} (give HOST:PORT)"))?
            .next()
            .ok_or_else(|| anyhow!("{url}: {authority} resolves to nothing"))?;
        if !addr.ip().is_loopback() && !allow_remote {
            bail!("{url}: {} is not a loopback address; pass --allow-remote to load another host", addr.ip());
        }
        Ok(Target { addr, host: authority.to_owned(), prefix: path.to_owned() })
    }

    /// A server we started ourselves, on `addr`, serving at the root.
    pub fn at(addr: SocketAddr) -> Target {
        Target { addr, host: addr.to_string(), prefix: String::new() }
    }
}

/// What one request asks.
#[derive(Clone, Copy, Debug)]
pub enum Ask {
    /// An OCSP request about certificate `index` of issuer `issuer`.
    Ocsp { issuer: u16, index: u64, alg: HashAlg, post: bool },
    /// A fixed path expected to return `len` bytes with HTTP 200 (the static-file ceiling).
    Static { len: usize },
}

#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub intended: Instant,
    pub step: usize,
    pub ask: Ask,
    pub check_signature: bool,
}

/// One step's figures as seen by the client.
pub struct StepStats {
    pub scheduled: u64,
    pub backlog_dropped: u64,
    pub answered: u64,
    pub completed_in_window: u64,
    pub ok_in_window: u64,
    pub ok: u64,
    pub good: u64,
    pub revoked: u64,
    pub try_later: u64,
    pub signatures_checked: u64,
    pub failures: BTreeMap<&'static str, u64>,
    pub latency_us: Histogram<u64>,
    pub cdn: BTreeMap<String, u64>,
    pub post: u64,
    /// The same, by origin (when the load goes to several): index as in [`Ctx::targets`].
    pub origins: Vec<OriginStats>,
}

/// One origin's share of a step.
pub struct OriginStats {
    pub answered: u64,
    pub ok: u64,
    pub try_later: u64,
    pub failed: u64,
    pub latency_us: Histogram<u64>,
}

impl StepStats {
    fn new() -> StepStats {
        StepStats {
            scheduled: 0,
            backlog_dropped: 0,
            answered: 0,
            completed_in_window: 0,
            ok_in_window: 0,
            ok: 0,
            good: 0,
            revoked: 0,
            try_later: 0,
            signatures_checked: 0,
            failures: BTreeMap::new(),
            latency_us: new_histogram(),
            cdn: BTreeMap::new(),
            post: 0,
            origins: Vec::new(),
        }
    }

    fn origin(&mut self, index: usize) -> &mut OriginStats {
        while self.origins.len() <= index {
            self.origins.push(OriginStats { answered: 0, ok: 0, try_later: 0, failed: 0, latency_us: new_histogram() });
        }
        &mut self.origins[index]
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, other: StepStats) {
        self.scheduled += other.scheduled;
        self.backlog_dropped += other.backlog_dropped;
        self.answered += other.answered;
        self.completed_in_window += other.completed_in_window;
        self.ok_in_window += other.ok_in_window;
        self.ok += other.ok;
        self.good += other.good;
        self.revoked += other.revoked;
        self.try_later += other.try_later;
        self.signatures_checked += other.signatures_checked;
        self.post += other.post;
        add_histogram(&mut self.latency_us, &other.latency_us);
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        for (k, v) in other.cdn {
            *self.cdn.entry(k).or_default() += v;
        }
        for (i, o) in other.origins.into_iter().enumerate() {
            let mine = self.origin(i);
            mine.answered += o.answered;
            mine.ok += o.ok;
            mine.try_later += o.try_later;
            mine.failed += o.failed;
            add_histogram(&mut mine.latency_us, &o.latency_us);
        }
    }
}

/// Adds `b`'s counts to `a`. Histograms are only ever added to one made the same way (same
/// bounds), so adding cannot fail.
pub fn add_histogram(a: &mut Histogram<u64>, b: &Histogram<u64>) {
    a.add(b).expect("histograms with the same bounds");
}

/// Latencies from 1 us to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Quantile `q` of a histogram of microseconds, in milliseconds (0 when empty).
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A slice of the timeline (for the picture).
pub struct Bucket {
    pub scheduled: u64,
    pub answered: u64,
    pub ok: u64,
    pub latency_us: Histogram<u64>,
}

/// Everything the workers record, behind one lock (taken once per answer).
pub struct Recorder {
    pub t0: Instant,
    pub windows: Vec<(Duration, Duration)>,
    pub steps: Vec<StepStats>,
    pub bucket_width: Duration,
    pub buckets: Vec<Bucket>,
}

impl Recorder {
    pub fn new(t0: Instant, windows: Vec<(Duration, Duration)>, bucket_width: Duration, total: Duration) -> Recorder {
        let n = (total.as_secs_f64() / bucket_width.as_secs_f64()).ceil() as usize + 1;
        Recorder::with_buckets(t0, windows, bucket_width, n)
    }

    fn with_buckets(t0: Instant, windows: Vec<(Duration, Duration)>, bucket_width: Duration, n: usize) -> Recorder {
        let buckets = (0..n)
            .map(|_| Bucket {
                scheduled: 0,
                answered: 0,
                ok: 0,
                latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"),
            })
            .collect();
        let steps = windows.iter().map(|_| StepStats::new()).collect();
        Recorder { t0, windows, steps, bucket_width, buckets }
    }

    /// An empty recorder with the same windows and buckets (one per generator thread).
    pub fn empty_like(&self) -> Recorder {
        Recorder::with_buckets(self.t0, self.windows.clone(), self.bucket_width, self.buckets.len())
    }

    /// Adds what `other` (made by [`Recorder::empty_like`]) recorded.
    pub fn merge(&mut self, other: Recorder) {
        for (a, b) in self.steps.iter_mut().zip(other.steps) {
            a.merge(b);
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            a.scheduled += b.scheduled;
            a.answered += b.answered;
            a.ok += b.ok;
            add_histogram(&mut a.latency_us, &b.latency_us);
        }
    }

    fn bucket(&self, at: Instant) -> Option<usize> {
        let i = (at.saturating_duration_since(self.t0).as_secs_f64() / self.bucket_width.as_secs_f64()) as usize;
        (i < self.buckets.len()).then_some(i)
    }

    fn window_of(&self, at: Instant) -> Option<usize> {
        let t = at.saturating_duration_since(self.t0);
        self.windows.iter().position(|(start, len)| t >= *start && t < *start + *len)
    }

    pub fn scheduled(&mut self, job: &Job) {
        self.steps[job.step].scheduled += 1;
        if let Some(b) = self.bucket(job.intended) {
            self.buckets[b].scheduled += 1;
        }
    }

    pub fn record(&mut self, job: &Job, answered: Answered) {
        let Answered { origin, done, verdict, cdn, checked } = answered;
        let latency = done.saturating_duration_since(job.intended).as_micros().max(1) as u64;
        let answered = !matches!(verdict, Verdict::Fail(f) if f.starts_with("no answer:"));
        let in_window = self.window_of(done);
        let step = &mut self.steps[job.step];
        let by_origin = step.origin(origin);
        if answered {
            by_origin.answered += 1;
            let _ = by_origin.latency_us.record(latency);
        }
        match verdict {
            Verdict::Ok(_) => by_origin.ok += 1,
            Verdict::TryLater => by_origin.try_later += 1,
            Verdict::Fail(_) => by_origin.failed += 1,
        }
        if matches!(job.ask, Ask::Ocsp { post: true, .. }) {
            step.post += 1;
        }
        if checked {
            step.signatures_checked += 1;
        }
        if answered {
            step.answered += 1;
            let _ = step.latency_us.record(latency);
        }
        match verdict {
            Verdict::Ok(status) => {
                step.ok += 1;
                match status {
                    Status::Good => step.good += 1,
                    Status::Revoked => step.revoked += 1,
                }
            }
            Verdict::TryLater => step.try_later += 1,
            Verdict::Fail(what) => *step.failures.entry(what).or_default() += 1,
        }
        if let Some(c) = cdn {
            *step.cdn.entry(c).or_default() += 1;
        }
        if answered {
            if let Some(w) = in_window {
                self.steps[w].completed_in_window += 1;
                if matches!(verdict, Verdict::Ok(_)) {
                    self.steps[w].ok_in_window += 1;
                }
            }
            if let Some(b) = self.bucket(done) {
                let bucket = &mut self.buckets[b];
                bucket.answered += 1;
                if matches!(verdict, Verdict::Ok(_)) {
                    bucket.ok += 1;
                }
                let _ = bucket.latency_us.record(latency);
            }
        }
    }
}

/// How OCSP answers are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every answer walked: CertID echo, status as seeded, times; signatures on a sample.
    Full,
    /// HTTP 200 and a body of this many bytes, give or take `slack` (ECDSA signatures vary
    /// by a byte or two in DER). The benchmark judges jitocsp and its reference (a static
    /// file that cannot echo the CertID asked) the same way, so that the client's work is
    /// the same on both sides; it verifies a sample fully before measuring.
    Size { len: usize, slack: usize },
}

/// Shared by every connection task.
pub struct Ctx {
    /// Where the load goes: one origin, or several (a fleet without its load balancer), each
    /// connection keeping to one of them ([`Conn::to_origin`]). They share one path prefix.
    pub targets: Vec<Target>,
    pub corpus: Arc<Corpus>,
    /// Generator threads (each with its own runtime and its share of the connections).
    pub threads: usize,
    /// Path of the static file (Ask::Static).
    pub static_path: String,
    /// Send `Connection: close` and open a new connection for every request.
    pub close: bool,
    pub check: Check,
}

impl Ctx {
    /// Keep-alive, every answer fully checked, no static path.
    pub fn new(target: Target, corpus: Arc<Corpus>, threads: usize) -> Ctx {
        Ctx::with_origins(vec![target], corpus, threads)
    }

    /// As [`Ctx::new`], for several origins (at least one).
    pub fn with_origins(targets: Vec<Target>, corpus: Arc<Corpus>, threads: usize) -> Ctx {
        Ctx { targets, corpus, threads: threads.max(1), static_path: String::new(), close: false, check: Check::Full }
    }

    /// The path prefix every origin serves under.
    pub fn prefix(&self) -> &str {
        &self.targets[0].prefix
    }
}

/// Runs `run(thread)` on each of `threads` OS threads, each with a single-threaded runtime of
/// its own, and returns what each returned, in thread order. Blocks the calling runtime thread
/// (other tasks of the caller's runtime, such as the metrics sampler, carry on elsewhere).
pub fn on_threads<T, F, Fut>(threads: usize, run: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = T>,
{
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|thread| {
                    let run = &run;
                    std::thread::Builder::new()
                        .name(format!("generator-{thread}"))
                        .spawn_scoped(scope, move || {
                            let runtime = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .expect("a generator thread's runtime");
                            runtime.block_on(run(thread))
                        })
                        .expect("starting a generator thread")
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        })
    })
}

/// The connections of `thread` out of `threads`, by their index among `connections`.
pub fn connections_of(thread: usize, threads: usize, connections: usize) -> impl Iterator<Item = usize> {
    (thread..connections).step_by(threads.max(1))
}

/// One keep-alive connection, to one origin, with the buffer its requests are written into.
pub struct Conn {
    wire: Option<Wire>,
    origin: usize,
    request: Vec<u8>,
}

impl Conn {
    /// A connection to origin `index` of [`Ctx::targets`] (modulo their number).
    pub fn to_origin(index: usize) -> Conn {
        Conn { wire: None, origin: index, request: Vec::with_capacity(512) }
    }
}

thread_local! {
    static NOW_GT: std::cell::Cell<(i64, [u8; 15])> = const { std::cell::Cell::new((i64::MIN, [0; 15])) };
}

/// The current time as GeneralizedTime digits, recomputed once a second per thread.
pub fn now_generalized() -> [u8; 15] {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    NOW_GT.with(|cell| {
        let (at, text) = cell.get();
        if at == secs {
            text
        } else {
            let text = generalized_time(secs + 60);
            cell.set((secs, text));
            text
        }
    })
}

/// The GET path of a request: `/` + standard base64 of the DER, unescaped (as Let's Encrypt's
/// clients mostly sent it; `+`, `/` and `=` are legal in a path).
pub fn get_path(prefix: &str, der: &[u8]) -> String {
    let mut path = String::with_capacity(prefix.len() + 1 + der.len() * 4 / 3 + 4);
    path.push_str(prefix);
    path.push('/');
    base64::engine::general_purpose::STANDARD.encode_string(der, &mut path);
    path
}

/// What became of one job, for [`Recorder::record`].
pub struct Answered {
    pub origin: usize,
    pub done: Instant,
    pub verdict: Verdict,
    /// nginx's `X-Cache-Status` (cdn mode).
    pub cdn: Option<String>,
    /// The answer's signature was checked.
    pub checked: bool,
}

/// The request line's target and the body of one job's request.
fn write_request(out: &mut Vec<u8>, ask: &Ask, ctx: &Ctx, target: &Target) -> Option<crate::corpus::OcspAsk> {
    out.clear();
    let (ocsp, post) = match *ask {
        Ask::Ocsp { issuer, index, alg, post } => (Some(ctx.corpus.issuers[issuer as usize].request(index, alg)), post),
        Ask::Static { .. } => (None, false),
    };
    match (&ocsp, post) {
        (Some(o), false) => {
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(target.prefix.as_bytes());
            out.push(b'/');
            let at = out.len();
            out.resize(at + o.der.len().div_ceil(3) * 4, 0);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(&o.der, &mut out[at..])
                .expect("room for the base64 was made above");
            out.truncate(at + n);
        }
        (Some(_), true) => {
            out.extend_from_slice(b"POST ");
            out.extend_from_slice(if target.prefix.is_empty() { b"/" } else { target.prefix.as_bytes() });
        }
        (None, _) => {
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(ctx.static_path.as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(target.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    if ctx.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    match (&ocsp, post) {
        (Some(o), true) => {
            let _ = write!(out, "Content-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n", o.der.len());
            out.extend_from_slice(&o.der);
        }
        _ => out.extend_from_slice(b"\r\n"),
    }
    ocsp
}

impl Ctx {
    /// Sends one job on `conn` and judges the answer (the caller records it).
    pub async fn execute(&self, conn: &mut Conn, job: &Job) -> Answered {
        let origin = conn.origin % self.targets.len();
        let target = &self.targets[origin];
        let ocsp = write_request(&mut conn.request, &job.ask, self, target);
        let (issuer, expected) = match job.ask {
            Ask::Ocsp { issuer, index, .. } => {
                (Some(&self.corpus.issuers[issuer as usize]), self.corpus.status(issuer as usize, index))
            }
            Ask::Static { .. } => (None, Status::Good),
        };
        let checked = job.check_signature && issuer.is_some() && self.check == Check::Full;
        let Conn { wire, request, .. } = conn;
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            // A kept-alive connection the server has just closed fails at once: like any HTTP
            // client, retry that once on a new connection.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let reused = wire.is_some();
                let w = match wire {
                    Some(w) => w,
                    None => wire.insert(Wire::connect(target.addr).await?),
                };
                match w.exchange(request).await {
                    Ok(answer) => {
                        let verdict = if answer.status != 200 {
                            Verdict::Fail("HTTP status not 200")
                        } else {
                            let cert_id = ocsp.as_ref().map_or(&[][..], |o| &o.cert_id[..]);
                            self.judge(&job.ask, answer.body, cert_id, expected, issuer.filter(|_| checked))
                        };
                        let cdn = answer.cache_status.map(|c| String::from_utf8_lossy(c).into_owned());
                        return Ok::<_, Failure>((verdict, cdn, answer.close));
                    }
                    Err(Failure::Closed) if reused && attempt == 1 => *wire = None,
                    Err(f) => return Err(f),
                }
            }
        })
        .await;
        let done = Instant::now();
        let (verdict, cdn, checked, keep) = match outcome {
            Err(_) => (Verdict::Fail("no answer: timeout"), None, false, false),
            Ok(Err(f)) => (Verdict::Fail(f.what()), None, false, false),
            Ok(Ok((verdict, cdn, close))) => (verdict, cdn, checked, !close && !self.close),
        };
        if !keep {
            *wire = None;
        }
        Answered { origin, done, verdict, cdn, checked }
    }

    fn judge(
        &self,
        ask: &Ask,
        body: &[u8],
        cert_id: &[u8],
        expected: Status,
        key_of: Option<&crate::corpus::Issuer>,
    ) -> Verdict {
        match *ask {
            Ask::Static { len } if body.len() == len => Verdict::Ok(Status::Good),
            Ask::Static { .. } => Verdict::Fail("static file of the wrong size"),
            Ask::Ocsp { .. } => match self.check {
                Check::Full => judge(body, cert_id, expected, &now_generalized(), key_of.map(|i| &i.key)),
                Check::Size { len, slack } if body.len().abs_diff(len) <= slack => Verdict::Ok(Status::Good),
                Check::Size { .. } => Verdict::Fail("response of the wrong size"),
            },
        }
    }
}

/// Which certificates' GET URLs were requested (and may so be in a CDN cache): one bit per
/// (issuer, index, hash algorithm).
pub struct Requested {
    bits: Vec<AtomicU64>,
    count: u64,
}

impl Requested {
    pub fn new(issuers: usize, count: u64) -> Requested {
        let n = (issuers as u64 * count * 2).div_ceil(64) as usize;
        Requested { bits: (0..n).map(|_| AtomicU64::new(0)).collect(), count }
    }

    fn bit(&self, issuer: u16, index: u64, alg: HashAlg) -> u64 {
        (issuer as u64 * self.count + index) * 2 + (alg == HashAlg::Sha256) as u64
    }

    pub fn mark(&self, issuer: u16, index: u64, alg: HashAlg) {
        let b = self.bit(issuer, index, alg);
        self.bits[(b / 64) as usize].fetch_or(1 << (b % 64), Ordering::Relaxed);
    }

    /// Every marked (issuer, index, alg).
    pub fn each(&self, mut f: impl FnMut(u16, u64, HashAlg)) {
        for (w, word) in self.bits.iter().enumerate() {
            let mut v = word.load(Ordering::Relaxed);
            while v != 0 {
                let b = w as u64 * 64 + v.trailing_zeros() as u64;
                v &= v - 1;
                let (cert, alg) = (b / 2, if b % 2 == 1 { HashAlg::Sha256 } else { HashAlg::Sha1 });
                f((cert / self.count) as u16, cert % self.count, alg);
            }
        }
    }
}

/// The unit of /proc's CPU times (USER_HZ, 100 on Linux's supported architectures).
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used by this process so far (user + system).
pub fn process_cpu_seconds() -> f64 {
    cpu_ticks("self") as f64 / CLOCK_TICKS_PER_SECOND
}

/// utime + stime of process `pid` ("self" for this one) in clock ticks, from /proc/PID/stat
/// (0 if it is gone).
pub fn cpu_ticks(pid: &str) -> u64 {
    stat_fields(pid, &[11, 12])
}

/// The sum of some numeric fields of /proc/PID/stat, counted from the one after the command
/// name (index 0 is the state, 11 and 12 utime and stime, 13 and 14 the waited-for children's
/// utime and stime); 0 for fields or processes that are not there.
pub fn stat_fields(pid: &str, indices: &[usize]) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some((_, fields)) = split_stat(&stat) else { return 0 };
    indices.iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum()
}

/// A /proc/PID/stat line as its command name and the fields after it (numbered as
/// [`stat_fields`] numbers them). The name is in parentheses and may itself hold spaces and
/// parentheses, hence the last ')'.
pub fn split_stat(stat: &str) -> Option<(&str, Vec<&str>)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    Some((stat.get(open + 1..close)?, stat.get(close + 2..)?.split(' ').collect()))
}
