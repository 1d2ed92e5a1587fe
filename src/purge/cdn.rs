//! The CDN purge hook: when a certificate's status changes, tell the CDN to drop what it has
//! cached for it.
//!
//! The origin never serves an outdated answer after a change (see [`crate::feed::log`]), but a
//! CDN keeps its copy until the copy's max-age runs out. With a hook configured (`[cdn]` in the
//! configuration), every change also owes the CDN a purge:
//!
//! 1. A status change ([`crate::status`]) inserts one `cdn_purges` row per changed certificate
//!    ([`enqueue`]) **in the change's own transaction**: the purge is owed if and only if the
//!    change committed, and it survives the admin process exiting or crashing right after.
//!    The row holds what the hook is given: the purge tag (the `Cache-Tag` header value,
//!    `<issuer name>:<serial hex>`) and the GET URLs ([`get_urls`]).
//! 2. Right after the commit the admin CLI calls the hook itself ([`deliver`]), so that an
//!    operator sees at once whether the CDN took it.
//! 3. Rows whose call failed (or that the admin never got to) are delivered by every running
//!    responder that has a hook configured ([`run`]).
//!
//! Both deliver in **batches**, because a mass revocation owes a purge per certificate and
//! CDN purge APIs take tens to hundreds of tags or URLs per call under a rate limit. A batch
//! is at most `cdn.max_batch` tags and at most `cdn.max_batch` URLs (as CDN APIs count; at
//! least one certificate), claimed with a lease (`FOR UPDATE SKIP LOCKED`, so two processes
//! never call a hook for one row at once) just before its call; calls start no closer
//! together than `1 / cdn.max_calls_per_second` ([`Pacer`], per process) and up to 16 run at
//! once. A batch is settled whole: its rows are deleted when every hook took it, or each has
//! `next_attempt_at` pushed back with exponential backoff (1 s, 2 s, 4 s, ... at most
//! [`MAX_BACKOFF`]) by its own attempts. A process that dies mid-call loses its lease after
//! twice `purge_timeout` plus 5 s.
//!
//! Delivery is at least once: hooks must be idempotent (CDN purges are).
//!
//! The hooks' contract, one call per batch: `cdn.purge_command` is run with `sh -c`, with the
//! purge tags as `$1`..., their number in `JITOCSP_PURGE_COUNT`, and the batch JSON
//! ([`Batch::json`]) on stdin; exit status 0 is success. `cdn.purge_url` gets a POST of the
//! same JSON; any 2xx is success. Both are bounded by `cdn.purge_timeout`. The JSON:
//!
//! ```json
//! {"tags": ["e1:0abc", "e1:0abd"],
//!  "urls": ["http://ocsp.example.com/MFQw...", "..."],
//!  "purges": [{"tag": "e1:0abc", "issuer": "e1", "serial": "0abc", "action": "revoke",
//!              "urls": ["http://ocsp.example.com/MFQw...", "..."]}, ...]}
//! ```

use std::future::Future;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::GenericClient;

use crate::cache::keys::purge_tag;
use crate::config::CdnConfig;
use crate::db::{cdn_purges, PgError};
use crate::metrics as m;
use crate::ocsp::request::{CertIdParts, CertIdVariant};
use crate::serial::Serial;
use crate::x509::CertIdHashes;

/// How often a responder looks for due purges.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts of one purge.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Hook calls that may run at once in one process. The pace bounds how often calls start;
/// this bounds how many a slow CDN API can hold open (at 50 calls/s, 300 ms each: 15).
const MAX_IN_FLIGHT: usize = 16;
/// How long before its slot a batch may be claimed: long enough to hide the claim's round
/// trip, far shorter than any lease (at least 5 s).
const CLAIM_AHEAD: Duration = Duration::from_millis(500);
/// How often a responder counts the owed purges for [`m::CDN_PURGES_PENDING`].
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// The admin CLI calls the hook itself for at most this many changes; a bulk revocation
/// leaves the rest to the responders.
pub const ADMIN_INLINE_LIMIT: usize = 100;
/// Characters of a failing hook's output kept in `last_error` and logs.
const ERROR_CHARS: usize = 500;

/// The GET URLs under which a CDN may hold responses about a certificate: for SHA-1 and
/// SHA-256 CertIDs, `base_url/` + the standard base64 of the request, raw and (when it
/// differs) percent-encoded (`+` `/` `=` as `%2B` `%2F` `%3D`), as clients send either.
/// Empty when `base_url` is empty.
pub fn get_urls(base_url: &str, hashes: &CertIdHashes, serial: &Serial) -> Vec<String> {
    use base64::Engine as _;
    if base_url.is_empty() {
        return Vec::new();
    }
    let base = base_url.trim_end_matches('/');
    let mut urls = Vec::with_capacity(4);
    // What OpenSSL (`-no_nonce`), browsers and stapling servers send: one CertID with NULL
    // hash parameters, no nonce.
    for variant in [CertIdVariant::Sha1Null, CertIdVariant::Sha256Null] {
        let der = crate::ocsp::request::encode(&[CertIdParts::new(hashes, variant, serial.as_bytes())], None);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let encoded = b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        urls.push(format!("{base}/{b64}"));
        if encoded != b64 {
            urls.push(format!("{base}/{encoded}"));
        }
    }
    urls
}

/// Why purges could not be recorded or delivered (the hooks' own failures are data, see
/// [`Delivery`]).
#[derive(Debug, thiserror::Error)]
pub enum CdnError {
    /// The issuer's stored certificate, needed for the GET URLs, cannot be read.
    #[error(transparent)]
    IssuerCertificate(#[from] crate::x509::CertificateError),
    #[error(transparent)]
    Database(#[from] PgError),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Records, inside the change's transaction `tx`, one purge per certificate in `serials` of
/// the issuer whose certificate is `issuer_cert_der`. Returns the new rows' ids.
pub async fn enqueue(
    tx: &impl GenericClient,
    cdn: &CdnConfig,
    issuer_id: i32,
    issuer_name: &str,
    issuer_cert_der: &[u8],
    action: &str,
    serials: &[&Serial],
) -> Result<Vec<i64>, CdnError> {
    if serials.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = crate::x509::certid_hashes(issuer_cert_der)?;
    let bytes: Vec<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
    let tags: Vec<String> = serials.iter().map(|s| purge_tag(issuer_name, s)).collect();
    let urls: Vec<String> = serials.iter().map(|s| get_urls(&cdn.base_url, &hashes, s).join("\n")).collect();
    Ok(cdn_purges::insert(tx, issuer_id, &bytes, &tags, &urls, action).await.map_err(PgError::from)?)
}

/// One certificate's purge, as claimed.
#[derive(Clone, Debug)]
pub struct PurgeJob {
    pub id: i64,
    pub tag: String,
    pub urls: Vec<String>,
    pub action: String,
    /// Attempts including this one.
    pub attempts: i32,
}

/// The purges one hook call carries: at most `cdn.max_batch` tags and `cdn.max_batch` URLs
/// (one certificate at least), in `cdn_purges` id order.
#[derive(Clone, Debug)]
pub struct Batch {
    pub jobs: Vec<PurgeJob>,
}

impl Batch {
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(|j| j.tag.as_str())
    }

    pub fn url_count(&self) -> usize {
        self.jobs.iter().map(|j| j.urls.len()).sum()
    }

    /// The JSON both hooks get: flat `tags` and `urls` arrays, ready for a CDN's purge API,
    /// and `purges`, one object per certificate.
    pub fn json(&self) -> String {
        let purges: Vec<serde_json::Value> = self
            .jobs
            .iter()
            .map(|job| {
                let (issuer, serial) = job.tag.rsplit_once(':').unwrap_or((&job.tag, ""));
                serde_json::json!({
                    "tag": job.tag,
                    "issuer": issuer,
                    "serial": serial,
                    "action": job.action,
                    "urls": job.urls,
                })
            })
            .collect();
        let urls: Vec<&str> = self.jobs.iter().flat_map(|j| j.urls.iter().map(String::as_str)).collect();
        serde_json::json!({ "tags": self.tags().collect::<Vec<_>>(), "urls": urls, "purges": purges }).to_string()
    }

    /// The most attempts of its purges (for the logs).
    fn attempt(&self) -> i32 {
        self.jobs.iter().map(|j| j.attempts).max().unwrap_or(0)
    }
}

/// Claims the next batch of due purges (with `only`, among those ids) for `lease`: nobody
/// else calls a hook for them until the lease runs out. `None` when nothing is due.
async fn claim(
    client: &impl GenericClient,
    only: Option<&[i64]>,
    max_batch: usize,
    lease: Duration,
) -> Result<Option<Batch>, PgError> {
    let limit = i64::try_from(max_batch).unwrap_or(i64::MAX);
    let claimed = cdn_purges::claim(client, only, limit, lease).await?;
    let jobs: Vec<PurgeJob> = claimed
        .into_iter()
        .map(|c| PurgeJob { id: c.id, tag: c.tag, urls: c.urls, action: c.action, attempts: c.attempts })
        .collect();
    Ok((!jobs.is_empty()).then_some(Batch { jobs }))
}

/// Backoff before attempt `attempts + 1`: 1 s, 2 s, 4 s, ... at most [`MAX_BACKOFF`].
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 16) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Settles one called batch, all its purges alike: deleted when every hook took it, else
/// rescheduled, each with the backoff of its own attempts.
async fn settle(client: &impl GenericClient, batch: &Batch, result: &Result<(), HookFailure>) -> Result<(), PgError> {
    let ids: Vec<i64> = batch.jobs.iter().map(|j| j.id).collect();
    let (outcome, settled) = match result {
        Ok(()) => ("done", cdn_purges::delete(client, &ids).await),
        Err(error) => {
            let backoffs: Vec<Duration> = batch.jobs.iter().map(|j| backoff(j.attempts)).collect();
            ("retried", cdn_purges::reschedule(client, &ids, &error.to_string(), &backoffs).await)
        }
    };
    settled?;
    metrics::counter!(m::CDN_PURGE_ITEMS, "result" => outcome).increment(ids.len() as u64);
    Ok(())
}

/// Spaces the starts of hook calls at least `1 / max_calls_per_second` apart. A slot is
/// `max(now, previous slot + interval)`: time spent idle earns no credit, so no window of any
/// length holds more than its share of calls plus one, however the calls bunch up.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(calls_per_second: f64) -> Self {
        // The configuration bounds the rate (crate::config); the clamp keeps an unchecked
        // value from panicking in Duration.
        let interval = Duration::from_secs_f64(1.0 / calls_per_second.clamp(0.001, 1e6));
        Pacer { interval, next: None }
    }

    /// When the next call may start, as of `now` (the caller's clock); nothing is taken.
    pub fn earliest(&self, now: Instant) -> Instant {
        self.next.filter(|next| *next > now).unwrap_or(now)
    }

    /// Takes the first free slot at or after `now` and returns when it starts; the caller
    /// starts its call no earlier.
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let start = self.earliest(now);
        self.next = Some(start + self.interval);
        start
    }
}

/// Why one hook call failed. The text is stored in `cdn_purges.last_error` and logged as one
/// line, so each variant's text includes its cause.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run sh: {0}")]
    Spawn(std::io::Error),
    #[error("waiting for the command: {0}")]
    Wait(std::io::Error),
    #[error("hook task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("timed out after {0:?}")]
    CommandTimeout(Duration),
    /// `output` is the end of what the command wrote to stderr.
    #[error("exited with {status}{}{output}", if .output.is_empty() { "" } else { ": " })]
    Exit { status: std::process::ExitStatus, output: String },
    #[error("only http:// URLs are supported")]
    NotHttp,
    #[error("connect {host}: {error}")]
    Connect { host: String, error: std::io::Error },
    #[error("sending to {host}: {error}")]
    Send { host: String, error: std::io::Error },
    #[error("reading from {host}: {error}")]
    Receive { host: String, error: std::io::Error },
    #[error("{host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("{host} sent no HTTP status line")]
    NoStatusLine { host: String },
    #[error("no answer within {0:?}")]
    HttpTimeout(Duration),
}

/// The hooks that failed for one purge.
#[derive(Debug)]
pub struct HookFailure {
    pub command: Option<HookError>,
    pub url: Option<HookError>,
}

impl HookFailure {
    /// The task calling the hooks ended without an answer (it panicked).
    fn task(error: tokio::task::JoinError) -> Self {
        HookFailure { command: Some(HookError::Task(error)), url: None }
    }
}

impl std::fmt::Display for HookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.command, &self.url) {
            (Some(c), Some(u)) => write!(f, "purge_command: {c}; purge_url: {u}"),
            (Some(c), None) => write!(f, "purge_command: {c}"),
            (None, Some(u)) => write!(f, "purge_url: {u}"),
            (None, None) => f.write_str("no hook failed"),
        }
    }
}

impl std::error::Error for HookFailure {}

/// Calls every configured hook once for `batch`. Ok only if all succeeded.
pub async fn call_hooks(cdn: &CdnConfig, batch: &Batch) -> Result<(), HookFailure> {
    let mut failure = HookFailure { command: None, url: None };
    let body = batch.json();
    if !cdn.purge_command.is_empty() {
        let started = Instant::now();
        let result = run_command(cdn, batch, &body).await;
        record("command", started, result.is_ok());
        failure.command = result.err();
    }
    if !cdn.purge_url.is_empty() {
        let started = Instant::now();
        let result = post_json(&cdn.purge_url, &body, cdn.purge_timeout).await;
        record("http", started, result.is_ok());
        failure.url = result.err();
    }
    let (purges, urls, attempt) = (batch.jobs.len(), batch.url_count(), batch.attempt());
    if failure.command.is_none() && failure.url.is_none() {
        tracing::info!(purges, urls, attempt, first = ?batch.tags().next(), "CDN purge call done");
        Ok(())
    } else {
        tracing::warn!(purges, urls, attempt, first = ?batch.tags().next(), error = %failure,
            retry_in = ?backoff(attempt), "CDN purge call failed; its purges will be retried");
        Err(failure)
    }
}

fn record(hook: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "done" } else { "failed" };
    metrics::counter!(m::CDN_PURGES, "hook" => hook, "result" => outcome).increment(1);
    metrics::histogram!(m::CDN_PURGE_SECONDS, "hook" => hook).record(started.elapsed().as_secs_f64());
}

/// Runs `cdn.purge_command` with `sh -c` (in a blocking thread), killing it at the timeout.
async fn run_command(cdn: &CdnConfig, batch: &Batch, body: &str) -> Result<(), HookError> {
    let command = cdn.purge_command.clone();
    let timeout = cdn.purge_timeout;
    let tags: Vec<String> = batch.tags().map(str::to_owned).collect();
    let body = body.to_owned();
    tokio::task::spawn_blocking(move || run_command_blocking(&command, &tags, body, timeout))
        .await
        .map_err(HookError::Task)?
}

/// The command contract: `$1`... are the purge tags, `JITOCSP_PURGE_COUNT` their number, and
/// stdin the batch JSON.
fn run_command_blocking(command: &str, tags: &[String], body: String, timeout: Duration) -> Result<(), HookError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg("jitocsp-purge")
        .args(tags)
        .env("JITOCSP_PURGE_COUNT", tags.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HookError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A batch's JSON can outgrow the pipe's buffer: written from its own thread, so that a
        // command that never reads stdin is still bounded by the timeout below. A command that
        // does not read stdin closes the pipe: not an error.
        std::thread::spawn(move || {
            let _ = stdin.write_all(body.as_bytes());
        });
    }
    let (sender, stderr) = std::sync::mpsc::channel();
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = sender.send(text);
        });
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(HookError::CommandTimeout(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(HookError::Wait(e)),
        }
    };
    // A background process of the command may hold stderr open: do not wait for it long.
    let output = stderr.recv_timeout(Duration::from_millis(500)).unwrap_or_default();
    match status? {
        status if status.success() => Ok(()),
        status => {
            let output: String =
                output.trim().chars().rev().take(ERROR_CHARS).collect::<Vec<_>>().into_iter().rev().collect();
            Err(HookError::Exit { status, output })
        }
    }
}

/// POSTs `body` (JSON) to an `http://` URL; Ok on any 2xx status.
async fn post_json(url: &str, body: &str, timeout: Duration) -> Result<(), HookError> {
    match tokio::time::timeout(timeout, post_json_inner(url, body)).await {
        Ok(result) => result,
        Err(_) => Err(HookError::HttpTimeout(timeout)),
    }
}

async fn post_json_inner(url: &str, body: &str) -> Result<(), HookError> {
    use base64::Engine as _;
    let rest = url.strip_prefix("http://").ok_or(HookError::NotHttp)?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let (userinfo, host) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
    let address = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|error| HookError::Connect { host: host.to_owned(), error })?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: jitocsp/{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if let Some(userinfo) = userinfo {
        let decoded = percent_encoding::percent_decode_str(userinfo).decode_utf8_lossy();
        let credentials = base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes());
        request.push_str(&format!("Authorization: Basic {credentials}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.map_err(|error| HookError::Send { host: host.to_owned(), error })?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    // The status line is all that matters; read until it is complete (or the peer closes).
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buffer).await.map_err(|error| HookError::Receive { host: host.to_owned(), error })?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    match line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) {
        Some(status) if (200..300).contains(&status) => Ok(()),
        Some(status) => Err(HookError::Status { host: host.to_owned(), status }),
        None => Err(HookError::NoStatusLine { host: host.to_owned() }),
    }
}

/// What [`deliver`] did.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Purges settled as done.
    pub done: usize,
    /// Purges whose call failed (rescheduled).
    pub failed: usize,
    /// Batches called.
    pub calls: usize,
    /// The first failure.
    pub error: Option<HookFailure>,
}

/// Calls the hooks for the purges `ids` now (the admin CLI, right after its commit), in
/// batches: claims, calls, settles. Purges someone else holds a lease on are left to them.
pub async fn deliver(client: &impl GenericClient, cdn: &CdnConfig, ids: &[i64]) -> Result<Delivery, CdnError> {
    let mut delivery = Delivery::default();
    if ids.is_empty() || !cdn.enabled() {
        return Ok(delivery);
    }
    let mut pacer = Pacer::new(cdn.max_calls_per_second);
    drain(client, cdn, &mut pacer, Some(ids), &mut delivery).await?;
    Ok(delivery)
}

fn lease(cdn: &CdnConfig) -> Duration {
    cdn.purge_timeout * 2 + Duration::from_secs(5)
}

/// Calls until no purge (of `only`, if given) is due. Each batch is claimed at most
/// [`CLAIM_AHEAD`] before its slot from `pacer` (so the claim's round trip overlaps the wait
/// and a lease is never spent waiting) and its call starts when the pacer says, at the
/// earliest; up to `MAX_IN_FLIGHT` calls run at once, settled as each returns.
async fn drain(
    client: &impl GenericClient,
    cdn: &CdnConfig,
    pacer: &mut Pacer,
    only: Option<&[i64]>,
    delivery: &mut Delivery,
) -> Result<(), CdnError> {
    let mut in_flight = FuturesUnordered::new();
    let mut exhausted = false;
    loop {
        if !exhausted && in_flight.len() < MAX_IN_FLIGHT {
            let slot = pacer.earliest(Instant::now());
            let claim_at = slot.checked_sub(CLAIM_AHEAD).unwrap_or(slot);
            settle_until(client, &mut in_flight, delivery, claim_at).await?;
            let Some(batch) = claim(client, only, cdn.max_batch, lease(cdn)).await? else {
                exhausted = true;
                continue;
            };
            // Reserved only now, at the call's start: starts are never closer than the
            // pace, however long the claim took.
            let start = pacer.reserve(Instant::now());
            settle_until(client, &mut in_flight, delivery, start).await?;
            delivery.calls += 1;
            // A task of its own, so that the call (and its timeout) runs on while this loop
            // waits for the database.
            let call = tokio::spawn({
                let (cdn, batch) = (cdn.clone(), batch.clone());
                async move { call_hooks(&cdn, &batch).await }
            });
            in_flight.push(async move {
                let result = call.await.unwrap_or_else(|e| Err(HookFailure::task(e)));
                (batch, result)
            });
            continue;
        }
        match in_flight.next().await {
            Some((batch, result)) => settle_into(client, &batch, result, delivery).await?,
            None => return Ok(()),
        }
    }
}

/// Settles the calls that return before `deadline`, then returns at `deadline`.
async fn settle_until<F>(
    client: &impl GenericClient,
    in_flight: &mut FuturesUnordered<F>,
    delivery: &mut Delivery,
    deadline: Instant,
) -> Result<(), PgError>
where
    F: Future<Output = (Batch, Result<(), HookFailure>)>,
{
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return Ok(()),
            Some((batch, result)) = in_flight.next() => settle_into(client, &batch, result, delivery).await?,
        }
    }
}

async fn settle_into(
    client: &impl GenericClient,
    batch: &Batch,
    result: Result<(), HookFailure>,
    delivery: &mut Delivery,
) -> Result<(), PgError> {
    settle(client, batch, &result).await?;
    match result {
        Ok(()) => delivery.done += batch.jobs.len(),
        Err(e) => {
            delivery.failed += batch.jobs.len();
            delivery.error.get_or_insert(e);
        }
    }
    Ok(())
}

/// One responder pass: calls the hooks for every due purge, paced by `pacer`, then returns
/// what it did.
pub async fn drain_once(pool: &Pool, cdn: &CdnConfig, pacer: &mut Pacer) -> Result<Delivery, CdnError> {
    let client = pool.get().await?;
    let mut delivery = Delivery::default();
    drain(&**client, cdn, pacer, None, &mut delivery).await?;
    Ok(delivery)
}

/// Runs forever in a responder with a hook configured, delivering owed purges, and reports
/// how many are owed.
pub async fn run(pool: Pool, cdn: CdnConfig) {
    tokio::spawn(report_backlog(pool.clone()));
    // One pacer for the life of the process: the pace holds across passes.
    let mut pacer = Pacer::new(cdn.max_calls_per_second);
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = drain_once(&pool, &cdn, &mut pacer).await {
            tracing::warn!(%error, "delivering CDN purges failed");
        }
    }
}

/// Sets [`m::CDN_PURGES_PENDING`] every [`BACKLOG_INTERVAL`], apart from the passes, which
/// may last as long as a mass revocation takes to drain.
async fn report_backlog(pool: Pool) {
    let mut interval = tokio::time::interval(BACKLOG_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let counted = match pool.get().await {
            Ok(client) => cdn_purges::count(&**client).await.map_err(|e| PgError::from(e).to_string()),
            Err(e) => Err(e.to_string()),
        };
        match counted {
            Ok(pending) => metrics::gauge!(m::CDN_PURGES_PENDING).set(pending as f64),
            Err(error) => tracing::warn!(%error, "counting owed CDN purges failed"),
        }
    }
}

/// Made-up CertID hashes for the unit tests below.
#[cfg(test)]
fn hashes_for_test() -> CertIdHashes {
    use sha1::Sha1;
    use sha2::{Digest, Sha256};
    CertIdHashes {
        name_sha1: Sha1::digest(b"name").into(),
        key_sha1: Sha1::digest(b"key").into(),
        name_sha256: Sha256::digest(b"name").into(),
        key_sha256: Sha256::digest(b"key").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_cover_both_hashes_and_both_encodings() {
        use base64::Engine as _;
        let serial = Serial::from_hex("0abc").unwrap();
        assert!(get_urls("", &hashes_for_test(), &serial).is_empty());
        let urls = get_urls("http://ocsp.example.com/ocsp/", &hashes_for_test(), &serial);
        assert!(urls.len() >= 2 && urls.len() <= 4, "{urls:?}");
        assert!(urls.iter().all(|u| u.starts_with("http://ocsp.example.com/ocsp/M")), "{urls:?}");
        let mut variants = Vec::new();
        for u in &urls {
            let tail = &u["http://ocsp.example.com/ocsp/".len()..];
            assert!(!tail.contains('/') || !tail.contains('%'), "one form or the other: {u}");
            let b64 = tail.replace("%2B", "+").replace("%2F", "/").replace("%3D", "=");
            let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            let request = crate::ocsp::request::parse(&der).expect("our own request parses");
            assert_eq!((request.certs.len(), &request.certs[0].serial), (1, &serial));
            assert!(request.nonce.is_none());
            variants.push(request.certs[0].variant);
        }
        assert!(variants.contains(&CertIdVariant::Sha1Null) && variants.contains(&CertIdVariant::Sha256Null));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }

    fn batch_for_test() -> Batch {
        let job = |id: i64, tag: &str, urls: &[&str], action: &str| PurgeJob {
            id,
            tag: tag.into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            action: action.into(),
            attempts: 1,
        };
        Batch {
            jobs: vec![
                job(1, "e1:0abc", &["http://x/a", "http://x/b"], "revoke"),
                job(2, "e:2:0def", &[], "unrevoke"),
                job(3, "e1:01", &["http://x/c"], "revoke"),
            ],
        }
    }

    #[test]
    fn batch_json_has_flat_arrays_and_each_purge() {
        let v: serde_json::Value = serde_json::from_str(&batch_for_test().json()).unwrap();
        assert_eq!(v["tags"], serde_json::json!(["e1:0abc", "e:2:0def", "e1:01"]));
        assert_eq!(v["urls"], serde_json::json!(["http://x/a", "http://x/b", "http://x/c"]));
        let purges = v["purges"].as_array().unwrap();
        assert_eq!(purges.len(), 3);
        assert_eq!(purges[0]["issuer"], "e1");
        assert_eq!(purges[0]["serial"], "0abc");
        assert_eq!(purges[0]["urls"], serde_json::json!(["http://x/a", "http://x/b"]));
        // An issuer name may hold ':'; the serial (hex) never does.
        assert_eq!((purges[1]["issuer"].as_str(), purges[1]["serial"].as_str()), (Some("e:2"), Some("0def")));
        assert_eq!(purges[1]["action"], "unrevoke");
        assert_eq!(purges[1]["urls"], serde_json::json!([]));
    }

    #[test]
    fn command_hook_gets_tags_count_and_json_and_fails_on_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let batch = batch_for_test();
        let tags: Vec<String> = batch.tags().map(str::to_owned).collect();
        let cmd = format!("printf '%s|' \"$@\" > {0}; echo \"$JITOCSP_PURGE_COUNT\" >> {0}; cat >> {0}", out.display());
        run_command_blocking(&cmd, &tags, batch.json(), Duration::from_secs(5)).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, format!("e1:0abc|e:2:0def|e1:01|3\n{}", batch.json()));
        let e = run_command_blocking("echo nope >&2; exit 3", &tags, batch.json(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), "exited with exit status: 3: nope");
        let e = run_command_blocking("sleep 5", &tags, batch.json(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, HookError::CommandTimeout(_)), "{e}");
        let both = HookFailure { command: Some(e), url: Some(HookError::NotHttp) };
        assert_eq!(
            both.to_string(),
            "purge_command: timed out after 100ms; purge_url: only http:// URLs are supported"
        );
    }

    /// A body larger than a pipe holds, to a command that never reads it: the timeout still
    /// ends the call (the body is written from a thread of its own).
    #[test]
    fn command_ignoring_a_large_body_is_still_timed_out() {
        let body = "x".repeat(1 << 20);
        let e = run_command_blocking("sleep 5", &[], body, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, HookError::CommandTimeout(_)), "{e}");
    }

    /// The pace, with the clock given: calls asked for at once are spread `1 / rate` apart,
    /// and an idle spell earns no burst.
    #[test]
    fn pacer_spaces_calls_and_saves_no_credit() {
        let mut pacer = Pacer::new(4.0);
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let slots: Vec<Duration> = (0..6).map(|_| pacer.reserve(t0) - t0).collect();
        assert_eq!(slots, [ms(0), ms(250), ms(500), ms(750), ms(1000), ms(1250)]);
        // Looking does not take a slot.
        assert_eq!((pacer.earliest(t0) - t0, pacer.earliest(t0) - t0), (ms(1500), ms(1500)));
        // Asked later than its slot, a call starts when asked.
        assert_eq!(pacer.reserve(t0 + ms(1600)) - t0, ms(1600));
        assert_eq!(pacer.reserve(t0 + ms(1600)) - t0, ms(1850));
        // After ten idle seconds, still one call per interval.
        let t1 = t0 + Duration::from_secs(12);
        let later: Vec<Duration> = (0..3).map(|_| pacer.reserve(t1) - t1).collect();
        assert_eq!(later, [ms(0), ms(250), ms(500)]);
    }

    /// Counted over many calls asked for at random moments, no one-second window holds more
    /// calls than the rate allows (the first call of a window may sit on its edge: rate + 1).
    #[test]
    fn pacer_never_exceeds_the_rate_in_any_window() {
        for rate in [0.5, 5.0, 50.0] {
            let mut pacer = Pacer::new(rate);
            let t0 = Instant::now();
            let mut asked = t0;
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let starts: Vec<Instant> = (0..500)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    asked += Duration::from_micros(seed % 400_000);
                    pacer.reserve(asked)
                })
                .collect();
            assert!(starts
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_secs_f64(1.0 / rate) - Duration::from_nanos(1)));
            for (i, start) in starts.iter().enumerate() {
                let in_window = starts[i..].iter().take_while(|s| **s - *start < Duration::from_secs(1)).count();
                assert!(in_window as f64 <= rate.ceil(), "rate {rate}: {in_window} calls within 1 s");
            }
        }
    }
}
