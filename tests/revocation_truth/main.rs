//! Revocation truth in the deployment shapes where a "good" for a revoked certificate used to
//! slip through: a lagging streaming standby as the read replica, a notification connection
//! that dies silently, a CDN revalidating with conditional requests; and the Baseline
//! Requirements profile of the responses (time order, reason, validity, reason changes).
//!
//! Real parts only: the Postgres primary and its standby made by `scripts/services.sh
//! standby-up` (pg_basebackup, streaming replication), Redis, the `jitocsp` binary, openssl.

#[path = "../common/mod.rs"]
mod common;
mod load;
#[path = "../support/proxy.rs"]
mod proxy;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use proxy::Proxy;

/// How long after `admin revoke` returns a running responder may still be unaware of it:
/// notification latency. Every test below allows this, and no more, unless it says why.
const NOTIFICATION_BOUND: Duration = Duration::from_secs(1);
/// The documented bound for a silently dead notification connection (`feed::log::FEED_DEADLINE`,
/// the contract's one second).
const FEED_DEADLINE: Duration = Duration::from_secs(1);
/// How long the feed may go unproven before the responder reconnects and reports itself not
/// ready (`feed::log::FEED_LOST_AFTER`).
const FEED_LOST_AFTER: Duration = Duration::from_secs(5);
/// Scheduling slack on a loaded 2-core machine, added to the bounds above where a test waits.
const SLACK: Duration = Duration::from_secs(2);

fn standby_url() -> String {
    std::env::var("JITOCSP_TEST_STANDBY_URL")
        .expect("JITOCSP_TEST_STANDBY_URL must name the test database on a streaming standby: run scripts/test.sh")
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql").args([url, "-XqtAc", sql]).output().expect("running psql");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The certificate status `openssl ocsp` reads from a response ("good", "revoked", ...), or
/// the OCSP error status, after verifying it against the CA.
fn status_in(pki: &Pki, response: &[u8], cert: &Path) -> String {
    let text = openssl_check_response(pki, response, cert, "-sha1");
    for status in ["good", "revoked", "unknown"] {
        if text.contains(&format!(": {status}")) {
            assert!(text.contains("Response verify OK"), "unverified response:\n{text}");
            return status.to_owned();
        }
    }
    for status in ["tryLater", "unauthorized", "malformedRequest", "internalError"] {
        if text.to_lowercase().contains(&status.to_lowercase()) {
            return status.to_owned();
        }
    }
    panic!("no status in:\n{text}")
}

fn get_path(pki: &Pki, cert: &Path) -> String {
    format!("/{}", b64(&pki.request(cert, "-sha1")))
}

fn import(issuer: &str, cert: &Path) {
    jitocsp_ok(&["admin", "import", "--issuer", issuer, cert.to_str().unwrap()], &[]);
}

fn revoke(issuer: &str, cert: &Path, reason: &str, extra: &[&str]) {
    let mut args =
        vec!["admin", "revoke", "--issuer", issuer, "--cert-file", cert.to_str().unwrap(), "--reason", reason];
    args.extend_from_slice(extra);
    jitocsp_ok(&args, &[]);
}

/// Resumes the standby's replay when dropped, so a failing test leaves it streaming.
struct ReplayPaused(String);

impl ReplayPaused {
    fn pause(url: &str) -> ReplayPaused {
        psql(url, "SELECT pg_wal_replay_pause()");
        let started = Instant::now();
        while psql(url, "SELECT pg_get_wal_replay_pause_state()") != "paused" {
            assert!(started.elapsed() < Duration::from_secs(10), "the standby did not pause its replay");
            std::thread::sleep(Duration::from_millis(50));
        }
        ReplayPaused(url.to_owned())
    }
}

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        let _ = Command::new("psql").args([&self.0, "-XqtAc", "SELECT pg_wal_replay_resume()"]).output();
    }
}

/// Waits until the standby has replayed everything the primary has written so far.
fn wait_for_standby(standby: &str) {
    let target = psql(&database_url(), "SELECT pg_current_wal_lsn()");
    let started = Instant::now();
    while psql(standby, &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")) != "t" {
        assert!(started.elapsed() < Duration::from_secs(30), "the standby did not catch up with {target}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 1: with `read_url` on a standby whose replay is paused, a certificate revoked on the
/// primary is never answered good (single and several CertIDs), and the standby's stale row
/// is not served after it catches up either.
#[test]
fn a_lagging_replica_never_answers_good_for_a_revoked_certificate() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Standby]) {
        return;
    }
    let standby = standby_url();
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("lagging", "1a9001");
    let other = pki.leaf("other", "1a9002");
    import(&issuer, &cert);
    import(&issuer, &other);
    wait_for_standby(&standby);
    let server = Server::start(&[("JITOCSP_DATABASE_READ_URL", &standby)]);
    let path = get_path(&pki, &cert);
    assert_eq!(status_in(&pki, &server.get(&path, &[]).body, &cert), "good");

    let paused = ReplayPaused::pause(&standby);
    revoke(&issuer, &cert, "keyCompromise", &[]);
    let revoked_at = Instant::now();
    std::thread::sleep(NOTIFICATION_BOUND);
    // Longer than the 5 s clock margin the responder once relied on.
    let mut answers = Vec::new();
    while revoked_at.elapsed() < Duration::from_secs(8) {
        answers.push(status_in(&pki, &server.get(&path, &[]).body, &cert));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answers.iter().all(|a| a == "revoked"), "answers while the replica lagged: {answers:?}");
    assert!(
        psql(
            &standby,
            &format!(
                "SELECT count(*) FROM certificates c JOIN issuers i ON i.id = c.issuer_id \
                 WHERE i.name = '{issuer}' AND c.serial = '\\x1a9001'::bytea AND c.reason IS NULL"
            )
        ) == "1",
        "the standby must still say good, or this test proves nothing"
    );
    // Several CertIDs in one request are read and signed fresh: the same rule.
    let both = pki.request_certs(&[&cert, &other], "-sha1");
    let response = server.post(&both).body;
    assert_eq!(status_in(&pki, &response, &cert), "revoked");
    assert_eq!(status_in(&pki, &response, &other), "good");
    assert!(
        server.metric("jitocsp_status_reads_total", &["server=\"primary\"", "why=\"replica_behind_change\""]) >= 1.0,
        "the primary answered because the replica was behind a heard change"
    );

    drop(paused);
    wait_for_standby(&standby);
    assert_eq!(status_in(&pki, &server.get(&path, &[]).body, &cert), "revoked", "after the standby caught up");
}

/// Item 2: the LISTEN connection is blackholed (socket open, nothing passes) while every
/// other connection works. Within the feed deadline (one second) the responder serves only
/// confirmed responses (its local tier held "good"); once the feed is lost it says so on
/// /readyz and reconnects, and it recovers by itself when the link comes back.
#[test]
fn a_silently_dead_notification_link_cannot_keep_a_revoked_certificate_good() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("blackholed", "1a9101");
    import(&issuer, &cert);
    let (proxy, proxied) = Proxy::for_listener(&database_url());
    let server = Server::start(&[("DATABASE_URL", &proxied), ("JITOCSP_CACHE_LOCAL_ENTRIES", "1000")]);
    assert_eq!(proxy.marked_connections(), 1, "the listener's connection goes through the proxy");
    let path = get_path(&pki, &cert);
    for _ in 0..2 {
        assert_eq!(status_in(&pki, &server.get(&path, &[]).body, &cert), "good");
    }

    proxy.blackhole(true);
    revoke(&issuer, &cert, "keyCompromise", &[]);
    let revoked_at = Instant::now();
    // No notification gets through: the feed deadline alone bounds it, plus the test's slack.
    let deadline = FEED_DEADLINE + SLACK;
    let mut late_good = Vec::new();
    let mut not_ready_seen = false;
    // Past the deadline every answer must be "revoked"; the feed is reported lost later.
    while revoked_at.elapsed() < FEED_LOST_AFTER + Duration::from_secs(3) {
        let status = status_in(&pki, &server.get(&path, &[]).body, &cert);
        if status != "revoked" && revoked_at.elapsed() > deadline {
            late_good.push((revoked_at.elapsed(), status));
        }
        let (code, body) = metrics_endpoint(&server, "/readyz");
        not_ready_seen |= code == 503 && body.contains("status-change feed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(late_good.is_empty(), "answers later than {deadline:?} after the revocation: {late_good:?}");
    assert!(not_ready_seen, "/readyz never said the feed was not proven alive");
    assert!(server.metric("jitocsp_listener_reconnects_total", &[]) >= 1.0);

    proxy.blackhole(false);
    // (Other tests' issuers, whose keys are gone, keep /readyz at 503 in the shared database:
    // only the feed's own line matters here.)
    server.wait_until(Duration::from_secs(30), |s| {
        s.metrics_text().contains("jitocsp_listener_connected 1")
            && !metrics_endpoint(s, "/readyz").1.contains("status-change feed")
    });
    assert!(proxy.marked_connections() >= 2, "the listener reconnected");
    assert_eq!(status_in(&pki, &server.get(&path, &[]).body, &cert), "revoked");
}

/// Item 3: a CDN or browser revalidating its copy of the old "good" with the old validators
/// gets the new status, not 304; conditional headers apply to GET and HEAD only.
#[test]
fn revalidation_after_a_status_change_returns_the_new_status() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("revalidated", "1a9201");
    import(&issuer, &cert);
    let server = Server::start(&[]);
    let path = get_path(&pki, &cert);
    let first = server.get(&path, &[]);
    assert_eq!(status_in(&pki, &first.body, &cert), "good");
    let (last_modified, etag) = (first.header("last-modified").to_owned(), first.header("etag").to_owned());
    assert_eq!(server.get(&path, &[("If-Modified-Since", &last_modified)]).status, 304, "unchanged: 304");

    // Revoked as of an hour ago: the new response's thisUpdate is not pushed past the old one
    // by the revocation time, so only the validators' logic can tell them apart.
    let an_hour_ago = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    revoke(&issuer, &cert, "superseded", &["--at", &an_hour_ago]);
    std::thread::sleep(NOTIFICATION_BOUND);
    for headers in [
        vec![("If-Modified-Since", last_modified.as_str())],
        vec![("If-None-Match", etag.as_str())],
        vec![("If-None-Match", etag.as_str()), ("If-Modified-Since", last_modified.as_str())],
    ] {
        let response = server.get(&path, &headers);
        assert_eq!(response.status, 200, "{headers:?}");
        assert_eq!(status_in(&pki, &response.body, &cert), "revoked", "{headers:?}");
    }
    let head = block_on(http(server.port, "HEAD", &path, &[("If-Modified-Since", &last_modified)], &[])).unwrap();
    assert_eq!(head.status, 200, "HEAD revalidation");

    // The new response's own ETag still earns a 304 on GET, never on POST.
    let current = server.get(&path, &[]);
    let new_etag = current.header("etag").to_owned();
    assert_eq!(server.get(&path, &[("If-None-Match", &new_etag)]).status, 304);
    let request = pki.request(&cert, "-sha1");
    let post = block_on(http(
        server.port,
        "POST",
        "/",
        &[("Content-Type", "application/ocsp-request"), ("If-None-Match", &new_etag)],
        &request,
    ))
    .unwrap();
    assert_eq!(post.status, 200, "conditional headers apply to GET and HEAD only");
    assert_eq!(status_in(&pki, &post.body, &cert), "revoked");
}

/// Items 4 and 5: revocationTime <= thisUpdate, reason unspecified left out, max-age within
/// the refresh deadline, BR 4.9.10 bounds refused at start, and a reason change to
/// keyCompromise that keeps or back-dates the revocation time.
#[test]
fn responses_follow_the_baseline_requirements_profile() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl, Need::Judge]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("profile", "1a9301");
    import(&issuer, &cert);
    let server = Server::start(&[]);
    revoke(&issuer, &cert, "unspecified", &[]);
    std::thread::sleep(NOTIFICATION_BOUND);
    let response = server.get(&get_path(&pki, &cert), &[]);
    let text = openssl_check_response(&pki, &response.body, &cert, "-sha1");
    assert!(text.contains(": revoked"), "{text}");
    assert!(!text.contains("Reason"), "reason unspecified is expressed by leaving it out:\n{text}");
    let time = |label: &str| {
        let line =
            text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}:\n{text}"));
        let value = line.split_once(": ").unwrap().1.trim();
        chrono::NaiveDateTime::parse_from_str(value, "%b %e %H:%M:%S %Y GMT").unwrap_or_else(|e| panic!("{value}: {e}"))
    };
    assert!(time("Revocation Time") <= time("This Update"), "revocationTime <= thisUpdate:\n{text}");
    judge(&pki, &response.body, &["--issuer", "ca.pem", "--expect-cert-status", "revoked", "--lint"]);
    let max_age: u64 = response
        .header("cache-control")
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", response.header("cache-control")));
    assert!(max_age <= 48 * 3600, "max-age {max_age} runs past the refresh deadline (48 h after thisUpdate)");

    // A reason change to keyCompromise keeps the time; moving it later is refused.
    let later = chrono::Utc::now().to_rfc3339();
    let refused = jitocsp(
        &[
            "admin",
            "revoke",
            "--issuer",
            &issuer,
            "--cert-file",
            cert.to_str().unwrap(),
            "--reason",
            "keyCompromise",
            "--at",
            &later,
        ],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    revoke(&issuer, &cert, "keyCompromise", &[]);
    std::thread::sleep(NOTIFICATION_BOUND);
    let after = openssl_check_response(&pki, &server.get(&get_path(&pki, &cert), &[]).body, &cert, "-sha1");
    assert!(after.contains("Reason: keyCompromise"), "{after}");
    let revocation_time = |t: &str| t.lines().find(|l| l.contains("Revocation Time")).map(str::to_owned);
    assert_eq!(revocation_time(&after), revocation_time(&text), "the revocation time is kept");
    let audit = psql(
        &database_url(),
        &format!("SELECT count(*) FROM audit_log a JOIN issuers i ON i.id = a.issuer_id WHERE i.name = '{issuer}' AND a.action = 'reason_change'"),
    );
    assert_eq!(audit, "1", "one audit row for the reason change");

    // Validity and refresh outside BR 4.9.10 are refused at start, naming the rule.
    for (key, value) in [("JITOCSP_RESPONSES_VALIDITY", "10days"), ("JITOCSP_RESPONSES_REFRESH_AFTER", "90h")] {
        let output = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url())
            .env("REDIS_URL", redis_url())
            .env(key, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains("BR 4.9.10"), "{key}={value}: {stderr}");
    }
}

/// Item 8: a pending purge re-armed by a later change while a responder is deleting the keys
/// for the earlier one survives: the responder settles only the row it purged for.
#[test]
fn a_pending_purge_re_armed_during_a_retry_is_kept() {
    if skip_unless(&[
        Need::Postgres,
        Need::Redis,
        Need::Openssl,
        Need::Program("redis-server"),
        Need::Program("redis-cli"),
    ]) {
        return;
    }
    // A database of its own: every responder retries every pending purge it can see, and the
    // other tests' responders would settle this row for their own (unpaused) Redis.
    let scratch = Site::with_own_database();
    let database = scratch.database_url.clone();
    let env = [("DATABASE_URL", database.as_str())];
    let pki = Pki::new();
    jitocsp_ok(&["migrate"], &env);
    let issuer = unique("issuer");
    let signer = format!("file:{}", pki.file("ca.key").display());
    jitocsp_ok(
        &[
            "admin",
            "issuer",
            "add",
            "--name",
            &issuer,
            "--cert",
            pki.file("ca.pem").to_str().unwrap(),
            "--signer",
            &signer,
        ],
        &env,
    );
    let cert = pki.leaf("rearmed", "1a9401");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, cert.to_str().unwrap()], &env);
    let redis = PrivateRedis::start(free_port());
    let redis_url = redis.url();
    // A revocation whose purge failed, as the admin CLI leaves it when Redis is down.
    psql(
        &database,
        &format!(
            "INSERT INTO pending_purges (issuer_id, serial, since) \
             SELECT id, '\\x1a9401'::bytea, now() - interval '1 minute' FROM issuers WHERE name = '{issuer}'"
        ),
    );
    let redis_cli = |args: &[&str]| {
        let output = Command::new("redis-cli").args(["-p", &redis.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Writes wait: the responder's retry blocks in its DEL, after it has read the row.
    redis_cli(&["CLIENT", "PAUSE", "20000", "WRITE"]);
    let server =
        Server::start(&[("DATABASE_URL", &database), ("REDIS_URL", &redis_url), ("JITOCSP_REDIS_TIMEOUT_MS", "30000")]);
    server.wait_until(Duration::from_secs(20), |_| {
        redis_cli(&["CLIENT", "LIST"]).lines().any(|l| l.contains("flags=b") && l.contains("cmd=del"))
    });
    // A later change re-arms the row meanwhile.
    let rearmed = psql(
        &database,
        &format!("UPDATE pending_purges p SET since = now() FROM issuers i WHERE i.id = p.issuer_id AND i.name = '{issuer}' AND p.serial = '\\x1a9401'::bytea RETURNING p.since"),
    );
    redis_cli(&["CLIENT", "UNPAUSE"]);
    server
        .wait_until(Duration::from_secs(20), |s| s.metric("jitocsp_purge_retries_total", &["result=\"done\""]) >= 1.0);
    let left = psql(
        &database,
        &format!(
            "SELECT p.since FROM pending_purges p JOIN issuers i ON i.id = p.issuer_id \
             WHERE i.name = '{issuer}' AND p.serial = '\\x1a9401'::bytea"
        ),
    );
    assert_eq!(left, rearmed, "the re-armed purge is still owed");
}

/// A revocation committed while the LISTEN connection is down is never notified to this
/// responder: only the catch-up read after the reconnect tells it. No request arrives during
/// the outage (nothing gets confirmed by the primary meanwhile), so the local tier still holds
/// "good" when the feed is proven alive again; the catch-up must refuse it.
#[test]
fn a_revocation_missed_while_the_notification_link_was_down_is_caught_up() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let cert = pki.leaf("caught-up", "1a9102");
    import(&issuer, &cert);
    let (proxy, proxied) = Proxy::for_listener(&database_url());
    let server = Server::start(&[("DATABASE_URL", &proxied), ("JITOCSP_CACHE_LOCAL_ENTRIES", "1000")]);
    let path = get_path(&pki, &cert);
    for _ in 0..2 {
        assert_eq!(status_in(&pki, &server.get(&path, &[]).body, &cert), "good");
    }

    proxy.blackhole(true);
    revoke(&issuer, &cert, "keyCompromise", &[]);
    server.wait_until(Duration::from_secs(30), |s| s.metric("jitocsp_listener_reconnects_total", &[]) >= 1.0);
    proxy.blackhole(false);
    server.wait_until(Duration::from_secs(30), |s| {
        s.metrics_text().contains("jitocsp_listener_connected 1")
            && !metrics_endpoint(s, "/readyz").1.contains("status-change feed")
    });
    assert!(proxy.marked_connections() >= 2, "the listener reconnected");
    assert_eq!(status_in(&pki, &server.get(&path, &[]).body, &cert), "revoked");
}
