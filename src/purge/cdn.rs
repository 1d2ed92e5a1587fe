//! The CDN purge hook: when a certificate's status changes, tell the CDN to drop what it has
//! cached for it.
//!
//! The origin never serves an outdated answer after a change (see [`crate::feed::log`]), but a
//! CDN keeps its copy until the copy's max-age runs out. With a hook configured (`[cdn]` in the
//! configuration), every change also owes the CDN a purge:
//!
//! 1. `admin revoke` / `admin unrevoke` insert one `cdn_purges` row per changed certificate
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
) -> Result<Vec<i64>, String> {
    if serials.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = crate::x509::certid_hashes(issuer_cert_der).map_err(|e| e.to_string())?;
    let bytes: Vec<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
    let tags: Vec<String> = serials.iter().map(|s| purge_tag(issuer_name, s)).collect();
    let urls: Vec<String> = serials.iter().map(|s| get_urls(&cdn.base_url, &hashes, s).join("\n")).collect();
    let rows = tx
        .query(
            "INSERT INTO cdn_purges (issuer_id, serial, tag, urls, action) \
             SELECT $1, u.serial, u.tag, string_to_array(u.urls, E'\\n'), $5 \
             FROM unnest($2::bytea[], $3::text[], $4::text[]) WITH ORDINALITY AS u(serial, tag, urls, n) \
             ORDER BY u.n RETURNING id",
            &[&issuer_id, &bytes, &tags, &urls, &action],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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
) -> Result<Vec<PurgeJob>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE cdn_purges p SET lease_until = now() + make_interval(secs => $1), attempts = p.attempts + 1 \
             WHERE p.id IN (SELECT id FROM cdn_purges \
                 WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
                   AND ($2::int8[] IS NULL OR id = ANY($2)) \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING p.id, p.tag, p.urls, p.action, p.attempts",
            &[&lease.as_secs_f64(), &only, &limit],
        )
        .await?;
    let mut jobs: Vec<PurgeJob> = rows
        .iter()
        .map(|r| PurgeJob { id: r.get(0), tag: r.get(1), urls: r.get(2), action: r.get(3), attempts: r.get(4) })
        .collect();
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// Backoff before attempt `attempts + 1`: 1 s, 2 s, 4 s, ... at most [`MAX_BACKOFF`].
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 16) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Settles one delivered job: deleted on success, rescheduled with backoff on failure.
async fn settle(
    client: &impl GenericClient,
    job: &PurgeJob,
    result: &Result<(), String>,
) -> Result<(), tokio_postgres::Error> {
    match result {
        Ok(()) => client.execute("DELETE FROM cdn_purges WHERE id = $1", &[&job.id]).await?,
        Err(error) => {
            client
                .execute(
                    "UPDATE cdn_purges SET lease_until = NULL, last_error = $2, \
                     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    &[&job.id, error, &backoff(job.attempts).as_secs_f64()],
                )
                .await?
        }
    };
    Ok(())
}

/// Calls every configured hook for `job`. Ok only if all succeeded.
pub async fn call_hooks(cdn: &CdnConfig, job: &PurgeJob) -> Result<(), String> {
    let mut errors = Vec::new();
    if !cdn.purge_command.is_empty() {
        let started = Instant::now();
        let result = run_command(cdn, job).await;
        record("command", started, &result);
        if let Err(e) = result {
            errors.push(format!("purge_command: {e}"));
        }
    }
    if !cdn.purge_url.is_empty() {
        let started = Instant::now();
        let result = post_json(&cdn.purge_url, &job.json(), cdn.purge_timeout).await;
        record("http", started, &result);
        if let Err(e) = result {
            errors.push(format!("purge_url: {e}"));
        }
    }
    if errors.is_empty() {
        tracing::info!(tag = %job.tag, urls = job.urls.len(), attempt = job.attempts, action = %job.action,
            "CDN purge done");
        Ok(())
    } else {
        let error = errors.join("; ");
        tracing::warn!(tag = %job.tag, attempt = job.attempts, action = %job.action, %error,
            retry_in = ?backoff(job.attempts), "CDN purge failed; will retry");
        Err(error)
    }
}

fn record(hook: &'static str, started: Instant, result: &Result<(), String>) {
    let outcome = if result.is_ok() { "done" } else { "failed" };
    metrics::counter!(m::CDN_PURGES, "hook" => hook, "result" => outcome).increment(1);
    metrics::histogram!(m::CDN_PURGE_SECONDS, "hook" => hook).record(started.elapsed().as_secs_f64());
}

/// Runs `cdn.purge_command` with `sh -c` (in a blocking thread), killing it at the timeout.
async fn run_command(cdn: &CdnConfig, job: &PurgeJob) -> Result<(), String> {
    let command = cdn.purge_command.clone();
    let timeout = cdn.purge_timeout;
    let job = job.clone();
    tokio::task::spawn_blocking(move || run_command_blocking(&command, &job, timeout))
        .await
        .map_err(|e| format!("hook task failed: {e}"))?
}

fn run_command_blocking(command: &str, job: &PurgeJob, timeout: Duration) -> Result<(), String> {
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
        .map_err(|e| format!("cannot run sh: {e}"))?;
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
                break Err(format!("timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(format!("waiting for the command: {e}")),
        }
    };
    // A background process of the command may hold stderr open: do not wait for it long.
    let output = stderr.recv_timeout(Duration::from_millis(500)).unwrap_or_default();
    match status? {
        status if status.success() => Ok(()),
        status => {
            let tail: String =
                output.trim().chars().rev().take(ERROR_CHARS).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("exited with {status}{}{tail}", if tail.is_empty() { "" } else { ": " }))
        }
    }
}

/// POSTs `body` (JSON) to an `http://` URL; Ok on any 2xx status.
async fn post_json(url: &str, body: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, post_json_inner(url, body)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn post_json_inner(url: &str, body: &str) -> Result<(), String> {
    use base64::Engine as _;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let (userinfo, host) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
    let address = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&address).await.map_err(|e| format!("connect {host}: {e}"))?;
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
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending to {host}: {e}"))?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    // The status line is all that matters; read until it is complete (or the peer closes).
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buffer).await.map_err(|e| format!("reading from {host}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    match line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) {
        Some(status) if (200..300).contains(&status) => Ok(()),
        Some(status) => Err(format!("{host} answered HTTP {status}")),
        None => Err(format!("{host} sent no HTTP status line")),
    }
}

/// What [`deliver`] did.
#[derive(Debug, Default)]
pub struct Delivery {
    pub done: usize,
    pub failed: usize,
    /// The first failure's text.
    pub error: Option<String>,
}

/// Calls the hooks for the purges `ids` now (the admin CLI, right after its commit): claims
/// them, calls, settles. Purges someone else holds a lease on are left to them.
pub async fn deliver(client: &impl GenericClient, cdn: &CdnConfig, ids: &[i64]) -> Result<Delivery, String> {
    let mut delivery = Delivery::default();
    if ids.is_empty() || !cdn.enabled() {
        return Ok(delivery);
    }
    let jobs = claim(client, Some(ids), ids.len() as i64, lease(cdn)).await.map_err(|e| crate::db::error_text(&e))?;
    let results = join_all(jobs.iter().map(|job| call_hooks(cdn, job))).await;
    for (job, result) in jobs.iter().zip(results) {
        settle(client, job, &result).await.map_err(|e| crate::db::error_text(&e))?;
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
pub async fn retry_once(pool: &Pool, cdn: &CdnConfig) -> Result<usize, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let jobs = claim(&**client, None, BATCH, lease(cdn)).await.map_err(|e| crate::db::error_text(&e))?;
    let results = join_all(jobs.iter().map(|job| call_hooks(cdn, job))).await;
    for (job, result) in jobs.iter().zip(&results) {
        settle(&**client, job, result).await.map_err(|e| crate::db::error_text(&e))?;
    }
    let pending: i64 =
        client.query_one("SELECT count(*) FROM cdn_purges", &[]).await.map_err(|e| crate::db::error_text(&e))?.get(0);
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
        assert!(e.contains("3") && e.contains("nope"), "{e}");
        let e = run_command_blocking("sleep 5", &job, Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
