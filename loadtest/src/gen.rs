//! The load generator's connections: a fixed set of keep-alive HTTP/1.1 connections (each to
//! one origin), each driven by one task, and the [`Recorder`] every answer is judged into.
//!
//! Open loop: [`crate::schedule`] computes each request's *intended* send time from the
//! arrival process alone and hands the request to whichever connection is free; latency is
//! measured here from that intended time, so time spent waiting for a busy server (or for a
//! free connection) is counted, not hidden (no coordinated omission). The scheduler also
//! records its own lag (how late it handed each request over); together with the generator's
//! CPU use this tells a saturated generator from a slow server.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;

use crate::corpus::{Corpus, HashAlg, Status};
use crate::verify::{generalized_time, judge, Verdict};

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

    fn record(&mut self, job: &Job, origin: usize, done: Instant, verdict: Verdict, cdn: Option<&str>, checked: bool) {
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
            *step.cdn.entry(c.to_owned()).or_default() += 1;
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
    pub recorder: Mutex<Recorder>,
    /// Path of the static file (Ask::Static).
    pub static_path: String,
    /// Send `Connection: close` and open a new connection for every request.
    pub close: bool,
    pub check: Check,
}

impl Ctx {
    /// Keep-alive, every answer fully checked, no static path; the recorder is replaced by
    /// each phase that records.
    pub fn new(target: Target, corpus: Arc<Corpus>) -> Ctx {
        Ctx::with_origins(vec![target], corpus)
    }

    /// As [`Ctx::new`], for several origins (at least one).
    pub fn with_origins(targets: Vec<Target>, corpus: Arc<Corpus>) -> Ctx {
        Ctx {
            targets,
            corpus,
            recorder: Mutex::new(Recorder::new(Instant::now(), vec![], Duration::from_secs(1), Duration::ZERO)),
            static_path: String::new(),
            close: false,
            check: Check::Full,
        }
    }

    /// The path prefix every origin serves under.
    pub fn prefix(&self) -> &str {
        &self.targets[0].prefix
    }
}

/// One keep-alive connection, to one origin.
pub struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
    origin: usize,
}

impl Conn {
    /// A connection to origin `index` of [`Ctx::targets`] (modulo their number).
    pub fn to_origin(index: usize) -> Conn {
        Conn { sender: None, origin: index }
    }

    async fn ready(&mut self, addr: SocketAddr) -> Result<&mut SendRequest<Full<Bytes>>, &'static str> {
        if let Some(s) = &mut self.sender {
            if s.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "no answer: connect timeout")?
                .map_err(|_| "no answer: connect refused")?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await.map_err(|_| "no answer: handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected above"))
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

impl Ctx {
    /// Sends one job on `conn`, judges the answer and records it.
    pub async fn execute(&self, conn: &mut Conn, job: Job) {
        let origin = conn.origin % self.targets.len();
        let target = &self.targets[origin];
        let (method, uri, body, cert_id, expected, issuer) = match job.ask {
            Ask::Ocsp { issuer, index, alg, post } => {
                let iss = &self.corpus.issuers[issuer as usize];
                let crate::corpus::OcspAsk { cert_id, der } = iss.request(index, alg);
                let expected = self.corpus.status(issuer as usize, index);
                if post {
                    let path = if target.prefix.is_empty() { "/".to_owned() } else { target.prefix.clone() };
                    (Method::POST, path, Bytes::from(der), cert_id, expected, Some(iss))
                } else {
                    (Method::GET, get_path(&target.prefix, &der), Bytes::new(), cert_id, expected, Some(iss))
                }
            }
            Ask::Static { .. } => (Method::GET, self.static_path.clone(), Bytes::new(), Vec::new(), Status::Good, None),
        };
        let build = || {
            let mut builder = Request::builder().method(method.clone()).uri(&uri).header(header::HOST, &target.host);
            if method == Method::POST {
                builder = builder.header(header::CONTENT_TYPE, "application/ocsp-request");
            }
            if self.close {
                builder = builder.header(header::CONNECTION, "close");
            }
            builder.body(Full::new(body.clone())).expect("valid request")
        };
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            // A kept-alive connection the server has just closed fails at once: like any HTTP
            // client, retry that once on a new connection.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let reused = conn.sender.is_some();
                let sender = conn.ready(target.addr).await?;
                match sender.send_request(build()).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let cdn =
                            response.headers().get("x-cache-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let body =
                            response.into_body().collect().await.map_err(|_| "no answer: HTTP error")?.to_bytes();
                        return Ok::<_, &'static str>((status, cdn, body));
                    }
                    Err(_) if reused && attempt == 1 => conn.sender = None,
                    Err(_) => return Err("no answer: HTTP error"),
                }
            }
        })
        .await;
        let done = Instant::now();
        let (verdict, cdn, checked) = match outcome {
            Err(_) => {
                conn.sender = None;
                (Verdict::Fail("no answer: timeout"), None, false)
            }
            Ok(Err(what)) => {
                conn.sender = None;
                (Verdict::Fail(what), None, false)
            }
            Ok(Ok((status, cdn, body))) => {
                if self.close {
                    conn.sender = None;
                }
                let verdict = if status != 200 {
                    Verdict::Fail("HTTP status not 200")
                } else {
                    match job.ask {
                        Ask::Static { len } if body.len() == len => Verdict::Ok(Status::Good),
                        Ask::Static { .. } => Verdict::Fail("static file of the wrong size"),
                        Ask::Ocsp { .. } => match self.check {
                            Check::Full => {
                                let key = issuer.filter(|_| job.check_signature).map(|i| &i.key);
                                judge(&body, &cert_id, expected, &now_generalized(), key)
                            }
                            Check::Size { len, slack } if body.len().abs_diff(len) <= slack => {
                                Verdict::Ok(Status::Good)
                            }
                            Check::Size { .. } => Verdict::Fail("response of the wrong size"),
                        },
                    }
                };
                (verdict, cdn, job.check_signature && issuer.is_some() && self.check == Check::Full)
            }
        };
        self.recorder.lock().expect("recorder lock").record(&job, origin, done, verdict, cdn.as_deref(), checked);
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

/// CPU seconds used by this process so far (user + system).
pub fn process_cpu_seconds() -> f64 {
    cpu_ticks("self") as f64 / 100.0
}

/// utime + stime of process `pid` ("self" for this one) in clock ticks, from /proc/PID/stat
/// (0 if it is gone).
pub fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0 };
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of the whole line are utime and stime; `after` starts at field 3.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}
