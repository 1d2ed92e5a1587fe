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
//! 3. Rows whose call failed (or that the admin never got to) are retried by every running
//!    responder that has a hook configured ([`run`]): each pass claims due rows with a lease
//!    (`FOR UPDATE SKIP LOCKED`, so two processes never call the hook for one row at once),
//!    calls the hook, and deletes the row on success or pushes `next_attempt_at` back with
//!    exponential backoff (1 s, 2 s, 4 s, ... at most [`MAX_BACKOFF`]) on failure. A process
//!    that dies mid-call loses its lease after `purge_timeout` plus a margin.
//!
//! Delivery is at least once: hooks must be idempotent (CDN purges are).
//!
//! Hooks: `cdn.purge_command` is run with `sh -c`, with the tag as `$1` and the URLs as
//! `$2`..., the same in `JITOCSP_PURGE_*` environment variables, and a JSON description on
//! stdin; exit status 0 is success. `cdn.purge_url` gets a POST of the same JSON; any 2xx is
//! success. Both are bounded by `cdn.purge_timeout`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::future::join_all;
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
/// Purges a responder claims per pass (called concurrently).
const BATCH: i64 = 16;
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

/// One purge to deliver.
#[derive(Clone, Debug)]
pub struct PurgeJob {
    pub id: i64,
    pub tag: String,
    pub urls: Vec<String>,
    pub action: String,
    /// Attempts including this one.
    pub attempts: i32,
}

impl PurgeJob {
    /// The JSON the hooks get.
    pub fn json(&self) -> String {
        let (issuer, serial) = self.tag.rsplit_once(':').unwrap_or((&self.tag, ""));
        serde_json::json!({
            "tag": self.tag,
            "urls": self.urls,
            "issuer": issuer,
            "serial": serial,
            "action": self.action,
        })
        .to_string()
    }
}

/// Claims due purges (all due ones, at most `limit`; with `only`, just those ids) for
/// `lease`: nobody else calls their hook until the lease runs out.
async fn claim(
    client: &impl GenericClient,
    only: Option<&[i64]>,
    limit: i64,
    lease: Duration,
) -> Result<Vec<PurgeJob>, PgError> {
    let claimed = cdn_purges::claim(client, only, limit, lease).await?;
    Ok(claimed
        .into_iter()
        .map(|c| PurgeJob { id: c.id, tag: c.tag, urls: c.urls, action: c.action, attempts: c.attempts })
        .collect())
}

/// Backoff before attempt `attempts + 1`: 1 s, 2 s, 4 s, ... at most [`MAX_BACKOFF`].
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 16) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Settles one delivered job: deleted on success, rescheduled with backoff on failure.
async fn settle(client: &impl GenericClient, job: &PurgeJob, result: &Result<(), HookFailure>) -> Result<(), PgError> {
    match result {
        Ok(()) => cdn_purges::delete(client, job.id).await?,
        Err(error) => cdn_purges::reschedule(client, job.id, &error.to_string(), backoff(job.attempts)).await?,
    }
    Ok(())
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

/// Calls every configured hook for `job`. Ok only if all succeeded.
pub async fn call_hooks(cdn: &CdnConfig, job: &PurgeJob) -> Result<(), HookFailure> {
    let mut failure = HookFailure { command: None, url: None };
    if !cdn.purge_command.is_empty() {
        let started = Instant::now();
        let result = run_command(cdn, job).await;
        record("command", started, result.is_ok());
        failure.command = result.err();
    }
    if !cdn.purge_url.is_empty() {
        let started = Instant::now();
        let result = post_json(&cdn.purge_url, &job.json(), cdn.purge_timeout).await;
        record("http", started, result.is_ok());
        failure.url = result.err();
    }
    if failure.command.is_none() && failure.url.is_none() {
        tracing::info!(tag = %job.tag, urls = job.urls.len(), attempt = job.attempts, action = %job.action,
            "CDN purge done");
        Ok(())
    } else {
        tracing::warn!(tag = %job.tag, attempt = job.attempts, action = %job.action, error = %failure,
            retry_in = ?backoff(job.attempts), "CDN purge failed; will retry");
        Err(failure)
    }
}

fn record(hook: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "done" } else { "failed" };
    metrics::counter!(m::CDN_PURGES, "hook" => hook, "result" => outcome).increment(1);
    metrics::histogram!(m::CDN_PURGE_SECONDS, "hook" => hook).record(started.elapsed().as_secs_f64());
}

/// Runs `cdn.purge_command` with `sh -c` (in a blocking thread), killing it at the timeout.
async fn run_command(cdn: &CdnConfig, job: &PurgeJob) -> Result<(), HookError> {
    let command = cdn.purge_command.clone();
    let timeout = cdn.purge_timeout;
    let job = job.clone();
    tokio::task::spawn_blocking(move || run_command_blocking(&command, &job, timeout)).await.map_err(HookError::Task)?
}

fn run_command_blocking(command: &str, job: &PurgeJob, timeout: Duration) -> Result<(), HookError> {
    let (issuer, serial) = job.tag.rsplit_once(':').unwrap_or((&job.tag, ""));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg("jitocsp-purge")
        .arg(&job.tag)
        .args(&job.urls)
        .env("JITOCSP_PURGE_TAG", &job.tag)
        .env("JITOCSP_PURGE_URLS", job.urls.join(" "))
        .env("JITOCSP_PURGE_ISSUER", issuer)
        .env("JITOCSP_PURGE_SERIAL", serial)
        .env("JITOCSP_PURGE_ACTION", &job.action)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HookError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read stdin closes the pipe: not an error.
        let _ = stdin.write_all(job.json().as_bytes());
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
    pub done: usize,
    pub failed: usize,
    /// The first failure.
    pub error: Option<HookFailure>,
}

/// Calls the hooks for the purges `ids` now (the admin CLI, right after its commit): claims
/// them, calls, settles. Purges someone else holds a lease on are left to them.
pub async fn deliver(client: &impl GenericClient, cdn: &CdnConfig, ids: &[i64]) -> Result<Delivery, CdnError> {
    let mut delivery = Delivery::default();
    if ids.is_empty() || !cdn.enabled() {
        return Ok(delivery);
    }
    let jobs = claim(client, Some(ids), ids.len() as i64, lease(cdn)).await?;
    let results = join_all(jobs.iter().map(|job| call_hooks(cdn, job))).await;
    for (job, result) in jobs.iter().zip(results) {
        settle(client, job, &result).await?;
        match result {
            Ok(()) => delivery.done += 1,
            Err(e) => {
                delivery.failed += 1;
                delivery.error.get_or_insert(e);
            }
        }
    }
    Ok(delivery)
}

fn lease(cdn: &CdnConfig) -> Duration {
    cdn.purge_timeout * 2 + Duration::from_secs(5)
}

/// One responder pass: claims due purges, calls the hooks, settles. Returns how many were
/// attempted.
pub async fn retry_once(pool: &Pool, cdn: &CdnConfig) -> Result<usize, CdnError> {
    let client = pool.get().await?;
    let jobs = claim(&**client, None, BATCH, lease(cdn)).await?;
    let results = join_all(jobs.iter().map(|job| call_hooks(cdn, job))).await;
    for (job, result) in jobs.iter().zip(&results) {
        settle(&**client, job, result).await?;
    }
    let pending = cdn_purges::count(&**client).await.map_err(PgError::from)?;
    metrics::gauge!(m::CDN_PURGES_PENDING).set(pending as f64);
    Ok(jobs.len())
}

/// Runs forever in a responder with a hook configured, retrying owed purges.
pub async fn run(pool: Pool, cdn: CdnConfig) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = retry_once(&pool, &cdn).await {
            tracing::warn!(%error, "retrying CDN purges failed");
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

    #[test]
    fn json_names_everything() {
        let job = PurgeJob {
            id: 1,
            tag: "e1:0abc".into(),
            urls: vec!["http://x/y".into()],
            action: "revoke".into(),
            attempts: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&job.json()).unwrap();
        assert_eq!(v["tag"], "e1:0abc");
        assert_eq!(v["issuer"], "e1");
        assert_eq!(v["serial"], "0abc");
        assert_eq!(v["urls"][0], "http://x/y");
        assert_eq!(v["action"], "revoke");
    }

    #[test]
    fn command_hook_gets_tag_urls_and_json_and_fails_on_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let job = PurgeJob {
            id: 1,
            tag: "e1:0abc".into(),
            urls: vec!["http://x/a".into(), "http://x/b".into()],
            action: "revoke".into(),
            attempts: 1,
        };
        let cmd =
            format!("printf '%s|' \"$@\" > {0}; echo \"$JITOCSP_PURGE_SERIAL\" >> {0}; cat >> {0}", out.display());
        run_command_blocking(&cmd, &job, Duration::from_secs(5)).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("e1:0abc|http://x/a|http://x/b|0abc\n{"), "{text}");
        let e = run_command_blocking("echo nope >&2; exit 3", &job, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), "exited with exit status: 3: nope");
        let e = run_command_blocking("sleep 5", &job, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, HookError::CommandTimeout(_)), "{e}");
        let both = HookFailure { command: Some(e), url: Some(HookError::NotHttp) };
        assert_eq!(
            both.to_string(),
            "purge_command: timed out after 100ms; purge_url: only http:// URLs are supported"
        );
    }
}
