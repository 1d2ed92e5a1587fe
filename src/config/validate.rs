//! Checks that need more than a key's type: ranges, formats, and the CA/Browser Forum
//! Baseline Requirements' limits on validity and refresh.

use std::net::SocketAddr;
use std::time::Duration;

use super::secrets::{not_postgres, redact_url};
use super::{Config, ConfigError, Origins};
use crate::cache::redis::RedisMode;
use crate::db::tls::{PgTlsError, TlsMode};
use crate::tls::TlsFiles;

/// CA/Browser Forum Baseline Requirements 4.9.10 count the validity interval inclusively
/// (nextUpdate - thisUpdate + 1 s): at least eight hours...
pub const MIN_VALIDITY: Duration = Duration::from_secs(8 * 3600 - 1);
/// ...and at most ten days.
pub const MAX_VALIDITY: Duration = Duration::from_secs(10 * 24 * 3600 - 1);

/// Bounds of `responses.max_remembered_changes`: below a thousand, any routine batch of
/// revocations would put the responders on the degraded path; above a billion (16 GiB),
/// likely a typo.
const MIN_REMEMBERED: usize = 1_000;
const MAX_REMEMBERED: usize = 1_000_000_000;

/// The latest `responses.refresh_after` that BR 4.9.10 allows for `validity`: with an
/// interval of 16 hours or more, the refresh comes at least eight hours before nextUpdate and
/// no later than four days after thisUpdate; with a shorter one, at least half the interval
/// before nextUpdate.
pub fn max_refresh_after(validity: Duration) -> Duration {
    let interval = validity + Duration::from_secs(1);
    if interval >= Duration::from_secs(16 * 3600) {
        (validity - Duration::from_secs(8 * 3600)).min(Duration::from_secs(4 * 24 * 3600))
    } else {
        validity.saturating_sub(interval / 2)
    }
}

/// Largest `cdn.max_batch`: a batch's tags are a command hook's arguments, which must stay far
/// below the kernel's limit on a command line (about 2 MB), and no CDN takes more per call.
const MAX_CDN_BATCH: usize = 1000;
/// `cdn.max_calls_per_second` bounds: one call in about 17 minutes, and a pace no CDN API
/// allows but a local hook might take.
const MIN_CDN_RATE: f64 = 0.001;
const MAX_CDN_RATE: f64 = 1000.0;

/// `responses.expired_grace` bound: a century, past any archive's retention, and short
/// enough that a certificate's notAfter plus the grace is always a date.
const MAX_EXPIRED_GRACE: Duration = Duration::from_secs(100 * 36525 * 864);

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

pub(super) fn validate(c: &Config, o: &Origins) -> Result<(), ConfigError> {
    // [server]
    for (key, v) in [("server.listen", &c.server.listen), ("server.metrics_listen", &c.server.metrics_listen)] {
        if v.parse::<SocketAddr>().is_err() {
            return Err(o.invalid(key, format!("{v:?} is not an IP:port socket address (e.g. \"127.0.0.1:8080\")")));
        }
    }
    if c.server.listen == c.server.metrics_listen && !c.server.listen.ends_with(":0") {
        let m = &c.server.metrics_listen;
        return Err(
            o.invalid("server.metrics_listen", format!("{m:?} is also server.listen; metrics need their own address"))
        );
    }
    let p = &c.server.path_prefix;
    if !p.is_empty()
        && (!p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#']) || p.contains(char::is_whitespace))
    {
        let message = format!("{p:?} must be empty or start with '/' and not end with '/' (e.g. \"/ocsp\")");
        return Err(o.invalid("server.path_prefix", message));
    }

    for (key, d) in [("server.header_timeout", c.server.header_timeout), ("server.body_timeout", c.server.body_timeout)]
    {
        if d < Duration::from_millis(100) {
            return Err(o.invalid(key, format!("{} is below 100ms", show(d))));
        }
    }
    if c.server.max_connections < 1 {
        return Err(o.invalid("server.max_connections", "must be at least 1"));
    }

    // [database]
    let primary_tls = check_postgres_url(o, "database.url", &c.database.url, false)?;
    let replica_tls = check_postgres_url(o, "database.read_url", &c.database.read_url, true)?;
    let uses_tls = |mode: Option<TlsMode>| mode.is_some_and(|m| m != TlsMode::Off);
    check_tls_keys(
        o,
        "database",
        &c.database.tls_files(),
        uses_tls(primary_tls) || uses_tls(replica_tls),
        "sslmode=verify-full",
    )?;
    if c.database.pool_size < 1 {
        return Err(o.invalid("database.pool_size", "must be at least 1"));
    }
    if c.database.read_concurrency < 1 {
        return Err(o.invalid("database.read_concurrency", "must be at least 1"));
    }
    if c.database.connect_timeout_ms < 1 {
        return Err(o.invalid("database.connect_timeout_ms", "must be at least 1 (milliseconds)"));
    }

    // [redis]
    check_redis_url(o, "redis.url", &c.redis.url)?;
    for node in &c.redis.nodes {
        check_redis_url(o, "redis.nodes", node)?;
    }
    let redis_tls = match c.redis.mode {
        RedisMode::Cluster if !c.redis.nodes.is_empty() => c.redis.nodes.iter().any(|n| n.starts_with("rediss://")),
        _ => c.redis.url.starts_with("rediss://"),
    };
    check_tls_keys(o, "redis", &c.redis.tls_files(), redis_tls, "a rediss:// URL")?;
    if c.redis.timeout_ms < 1 {
        return Err(o.invalid("redis.timeout_ms", "must be at least 1 (milliseconds)"));
    }

    // [cache]
    let kp = &c.cache.key_prefix;
    if kp.is_empty() || kp.contains(['{', '}']) || kp.contains(char::is_whitespace) {
        return Err(o.invalid(
            "cache.key_prefix",
            format!("{kp:?} must be non-empty, without '{{', '}}' or whitespace (braces would break Redis Cluster hash tags)"),
        ));
    }

    // [responses]
    let r = &c.responses;
    if r.validity < MIN_VALIDITY || r.validity > MAX_VALIDITY {
        let (v, min, max) = (show(r.validity), show(MIN_VALIDITY), show(MAX_VALIDITY));
        let message = format!("{v} is out of range: must be between {min} and {max} (CA/Browser Forum BR 4.9.10)");
        return Err(o.invalid("responses.validity", message));
    }
    if r.refresh_after.is_zero() || r.refresh_after > max_refresh_after(r.validity) {
        return Err(o.invalid(
            "responses.refresh_after",
            format!(
                "{} must be greater than 0s and at most {} with responses.validity = {} (set by {}): \
                 CA/Browser Forum BR 4.9.10 wants a response refreshed at least 8 h before its \
                 nextUpdate and at most 4 days after its thisUpdate (half the interval before \
                 nextUpdate when it is under 16 h)",
                show(r.refresh_after),
                show(max_refresh_after(r.validity)),
                show(r.validity),
                o.of("responses.validity")
            ),
        ));
    }
    if r.expired_grace > MAX_EXPIRED_GRACE {
        let (g, max) = (show(r.expired_grace), show(MAX_EXPIRED_GRACE));
        return Err(o.invalid("responses.expired_grace", format!("{g} is more than {max}")));
    }
    if r.max_age_cap.is_some_and(|cap| cap.is_zero()) {
        return Err(o.invalid("responses.max_age_cap", "must be greater than 0s, or \"\" for no cap"));
    }
    if !(MIN_REMEMBERED..=MAX_REMEMBERED).contains(&r.max_remembered_changes) {
        return Err(o.invalid(
            "responses.max_remembered_changes",
            format!(
                "{} must be between {MIN_REMEMBERED} and {MAX_REMEMBERED} (16 bytes of memory each; past it, cached \
                 responses that may predate a forgotten change need a Postgres read each)",
                r.max_remembered_changes
            ),
        ));
    }

    // [signing]
    if c.signing.max_in_flight < 1 {
        return Err(o.invalid("signing.max_in_flight", "must be at least 1"));
    }
    if !(1..=1024).contains(&c.signing.pkcs11_sessions) {
        return Err(o.invalid("signing.pkcs11_sessions", "must be between 1 and 1024"));
    }
    if !(10..=600_000).contains(&c.signing.pkcs11_retry_ms) {
        return Err(o.invalid("signing.pkcs11_retry_ms", "must be between 10 and 600000"));
    }

    // [log]
    if c.log.level.trim().is_empty() {
        return Err(o.invalid("log.level", "must not be empty (e.g. \"info\")"));
    }
    let sample = c.log.request_sample;
    if !(0.0..=1.0).contains(&sample) {
        return Err(o.invalid("log.request_sample", format!("{sample} must be between 0.0 and 1.0")));
    }

    // [cdn]
    let base = &c.cdn.base_url;
    if !base.is_empty()
        && (!(base.starts_with("http://") || base.starts_with("https://"))
            || base.contains(['?', '#'])
            || base.contains(char::is_whitespace))
    {
        return Err(o.invalid(
            "cdn.base_url",
            format!(
                "{base:?} must be \"\" or an http:// or https:// URL without query (e.g. \"http://ocsp.example.com\")"
            ),
        ));
    }
    let url = &c.cdn.purge_url;
    if !url.is_empty() && (!url.starts_with("http://") || url.contains(char::is_whitespace)) {
        return Err(o.invalid(
            "cdn.purge_url",
            format!(
                "{} must be \"\" or an http:// URL (for an https API, call it from cdn.purge_command, e.g. with curl)",
                redact_url(url)
            ),
        ));
    }
    let timeout = c.cdn.purge_timeout;
    if timeout.is_zero() || timeout > Duration::from_secs(300) {
        return Err(o.invalid("cdn.purge_timeout", format!("{} must be between 1ms and 5m", show(timeout))));
    }
    if !(1..=MAX_CDN_BATCH).contains(&c.cdn.max_batch) {
        let message = format!("{} must be between 1 and {MAX_CDN_BATCH}", c.cdn.max_batch);
        return Err(o.invalid("cdn.max_batch", message));
    }
    let rate = c.cdn.max_calls_per_second;
    if !(MIN_CDN_RATE..=MAX_CDN_RATE).contains(&rate) {
        let message =
            format!("{rate} must be between {MIN_CDN_RATE} and {MAX_CDN_RATE} (e.g. 0.08 for 5 calls a minute)");
        return Err(o.invalid("cdn.max_calls_per_second", message));
    }
    Ok(())
}

/// Whatever the Postgres driver parses is accepted: every URL form and key=value strings, with
/// `sslmode` read as [`crate::db::tls`] reads it. Returns the URL's TLS mode (None: empty).
fn check_postgres_url(o: &Origins, key: &str, url: &str, may_be_empty: bool) -> Result<Option<TlsMode>, ConfigError> {
    if url.trim().is_empty() {
        if may_be_empty {
            return Ok(None);
        }
        return Err(o.invalid(key, "must not be empty (e.g. \"postgres://jitocsp@127.0.0.1:5432/jitocsp\")"));
    }
    match crate::db::tls::parse(url) {
        Ok((_, mode)) => Ok(Some(mode)),
        Err(e @ PgTlsError::Url(_)) => Err(o.invalid(key, format!("{}: {e}", not_postgres(url)))),
        Err(e) => Err(o.invalid(key, format!("{}: {e}", redact_url(url)))),
    }
}

/// The `tls_*` keys of `section`: a client certificate comes with its key, and TLS files set
/// for connections that do not use TLS are an error (they would silently protect nothing).
fn check_tls_keys(o: &Origins, section: &str, files: &TlsFiles, uses_tls: bool, ask: &str) -> Result<(), ConfigError> {
    match (&files.cert_file, &files.key_file) {
        (Some(_), None) => return Err(o.invalid(&format!("{section}.tls_key_file"), "must be set with tls_cert_file")),
        (None, Some(_)) => return Err(o.invalid(&format!("{section}.tls_cert_file"), "must be set with tls_key_file")),
        _ => {}
    }
    if !files.is_empty() && !uses_tls {
        let key = if files.ca_file.is_some() { "tls_ca_file" } else { "tls_cert_file" };
        return Err(o.invalid(
            &format!("{section}.{key}"),
            format!("is set, but no {section} connection uses TLS; ask for it with {ask}"),
        ));
    }
    Ok(())
}

/// A scheme check only: redis-rs would refuse `rediss://` in a build without TLS here, where
/// the cache layer reports it at connection time.
fn check_redis_url(o: &Origins, key: &str, url: &str) -> Result<(), ConfigError> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "rediss" && u.fragment() == Some("insecure") => Err(o.invalid(
            key,
            format!("{}: #insecure would skip verifying the server; set redis.tls_ca_file instead", redact_url(url)),
        )),
        Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => Ok(()),
        _ => Err(o.invalid(
            key,
            format!("{:?} is not a Redis URL (redis://, rediss://, redis+unix:// or unix://)", redact_url(url)),
        )),
    }
}
