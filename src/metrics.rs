//! Metric names, in one place so dashboards and code agree. Recorded with the `metrics`
//! crate; exported in Prometheus text format on the metrics listener (see `server`).

/// Requests, by `method` (GET, POST, HEAD) and `outcome` (the OCSP response status).
pub const REQUESTS: &str = "jitocsp_requests_total";
/// Request latency in seconds, by `method`.
pub const REQUEST_SECONDS: &str = "jitocsp_request_duration_seconds";
/// Cache lookups of single-certificate requests, by `tier` (local, redis) and `result`
/// (hit, miss, stale = valid but due for re-signing, unusable = must not be served, verified
/// = served after a Postgres check while notifications were down, corrupt, error). Local hits
/// also have a `key`: `request` for the raw-request tier (the request's bytes, not decoded),
/// `certid` for the decoded certificate and CertID form.
pub const CACHE_LOOKUPS: &str = "jitocsp_cache_lookups_total";
/// Keys in the raw-request tier (at most `cache.local_entries`), and the certificates they
/// belong to (sampled when /metrics is scraped).
pub const LOCAL_REQUEST_KEYS: &str = "jitocsp_local_request_keys";
pub const LOCAL_REQUEST_CERTIFICATES: &str = "jitocsp_local_request_certificates";
/// Misses that joined a signing already in flight for the same certificate.
pub const SINGLE_FLIGHT_JOINS: &str = "jitocsp_single_flight_joins_total";
/// Signatures made, by `issuer` and `signer` (the signer's description: `file:PATH` or the
/// PKCS#11 URI without any PIN).
pub const SIGNATURES: &str = "jitocsp_signatures_total";
/// Signature latency in seconds, by `issuer` and `signer`.
pub const SIGNATURE_SECONDS: &str = "jitocsp_signature_duration_seconds";
/// Signing failures, by `issuer` and `signer`.
pub const SIGNATURE_ERRORS: &str = "jitocsp_signature_errors_total";
/// PKCS#11 C_Login calls, by `signer` and `result` (ok, pin_incorrect, pin_locked,
/// pin_len_range, pin_expired, pin_invalid, error).
pub const PKCS11_LOGINS: &str = "jitocsp_pkcs11_logins_total";
/// PKCS#11 logins not attempted because the token refused the PIN the source still yields,
/// by `signer`.
pub const PKCS11_LOGINS_WITHHELD: &str = "jitocsp_pkcs11_logins_withheld_total";
/// Requests refused because signing capacity was exhausted.
pub const SIGNER_OVERLOADED: &str = "jitocsp_signer_overloaded_total";
/// Signing requests waiting for capacity (sampled when /metrics is scraped).
pub const SIGNER_WAITING: &str = "jitocsp_signer_waiting";
/// Signatures in progress (sampled when /metrics is scraped).
pub const SIGNER_IN_FLIGHT: &str = "jitocsp_signer_in_flight";
/// The configured limits, for dashboards: `signing.max_in_flight` and `signing.max_waiting`.
pub const SIGNER_MAX_IN_FLIGHT: &str = "jitocsp_signer_max_in_flight";
pub const SIGNER_MAX_WAITING: &str = "jitocsp_signer_max_waiting";
/// Certificates read from Postgres (one per certificate, however batched).
pub const DB_READS: &str = "jitocsp_db_reads_total";
/// Certificates per Postgres status query (concurrent misses are batched).
pub const DB_BATCH_SIZE: &str = "jitocsp_db_batch_size";
/// Postgres status-read latency in seconds.
pub const DB_READ_SECONDS: &str = "jitocsp_db_read_duration_seconds";
/// Postgres errors, by `op`.
pub const DB_ERRORS: &str = "jitocsp_db_errors_total";
/// Redis errors, by `op` (get, set, del).
pub const REDIS_ERRORS: &str = "jitocsp_redis_errors_total";
/// Redis latency in seconds, by `op`.
pub const REDIS_SECONDS: &str = "jitocsp_redis_duration_seconds";
/// Age of served responses (now - thisUpdate) in seconds.
pub const RESPONSE_AGE_SECONDS: &str = "jitocsp_response_age_seconds";
/// Status-change notifications received.
pub const NOTIFICATIONS: &str = "jitocsp_status_notifications_total";
/// Pending Redis purges retried, by `result` (done, failed).
pub const PURGE_RETRIES: &str = "jitocsp_purge_retries_total";
/// CDN purge hook calls (one per batch and hook), by `hook` (command, http) and `result`
/// (done, failed).
pub const CDN_PURGES: &str = "jitocsp_cdn_purges_total";
/// CDN purge hook latency in seconds (one call, a whole batch), by `hook`.
pub const CDN_PURGE_SECONDS: &str = "jitocsp_cdn_purge_duration_seconds";
/// Certificates whose CDN purge a batch settled, by `result`: done (every hook took the
/// batch; the purge is no longer owed) or retried (a hook failed; the purge is due again after
/// its backoff).
pub const CDN_PURGE_ITEMS: &str = "jitocsp_cdn_purge_items_total";
/// CDN purges owed in `cdn_purges` (not yet delivered, or being retried), counted every few
/// seconds by responders with a hook configured.
pub const CDN_PURGES_PENDING: &str = "jitocsp_cdn_purges_pending";
/// 1 while the status-change feed is proven alive (a heartbeat came back within the
/// deadline); 0 while cached responses need confirming by the primary.
pub const LISTENER_CONNECTED: &str = "jitocsp_listener_connected";
/// Seconds since the last heartbeat that came back through the feed.
pub const FEED_PROOF_AGE_SECONDS: &str = "jitocsp_feed_proof_age_seconds";
/// Times the feed was given up and reconnected.
pub const LISTENER_RECONNECTS: &str = "jitocsp_listener_reconnects_total";
/// Status changes this responder remembers (sampled when /metrics is scraped), and the most
/// it remembers (`responses.max_remembered_changes`).
pub const CHANGES_REMEMBERED: &str = "jitocsp_status_changes_remembered";
pub const CHANGES_REMEMBERED_MAX: &str = "jitocsp_status_changes_remembered_max";
/// 1 while changes forgotten past that limit are within a validity period: cached responses
/// that may predate them are served only after the primary confirms them.
pub const CHANGE_FLOOR_ACTIVE: &str = "jitocsp_status_change_floor_active";
/// Status reads, by `server` (replica, primary) and `why` (routine, replica_lagging,
/// replica_behind_change, feed_down, confirm).
pub const STATUS_READS: &str = "jitocsp_status_reads_total";
/// Connections open on the OCSP listener (bounded by `server.max_connections`).
pub const HTTP_CONNECTIONS: &str = "jitocsp_http_connections";
/// POST bodies that did not arrive within `server.body_timeout` (answered 408, closed).
pub const SLOW_BODIES: &str = "jitocsp_slow_bodies_total";
/// Replica reads sent to the primary because the replica failed a read within the last
/// few seconds (`database.read_url` down or refusing).
pub const REPLICA_UNAVAILABLE: &str = "jitocsp_replica_unavailable_total";
/// Issuer reloads that failed: the table could not be read, or a changed issuer could not be
/// built (it is then served as it was, or not at all if it is new).
pub const ISSUER_RELOAD_FAILURES: &str = "jitocsp_issuer_reload_failures_total";
/// Build information (value 1), by `version`.
pub const BUILD_INFO: &str = "jitocsp_build_info";

/// Histogram buckets for latencies, in seconds: 100 us to 10 s (the BR 4.10.2 limit).
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Histogram buckets for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Histogram buckets for response ages, in seconds: 1 minute to 10 days.
pub const AGE_BUCKETS: &[f64] =
    &[60.0, 600.0, 3600.0, 6.0 * 3600.0, 24.0 * 3600.0, 48.0 * 3600.0, 72.0 * 3600.0, 96.0 * 3600.0, 240.0 * 3600.0];

use metrics::{Counter, Histogram};

use crate::ocsp::ResponseStatus;

/// The method labels of [`REQUESTS`], in [`RequestMetrics`] order.
pub const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "other"];
const OUTCOMES: [ResponseStatus; 5] = [
    ResponseStatus::Successful,
    ResponseStatus::MalformedRequest,
    ResponseStatus::InternalError,
    ResponseStatus::TryLater,
    ResponseStatus::Unauthorized,
];

/// Handles for what the HTTP layer records on every request, registered once: the `counter!`
/// macros hash the name and labels and look the metric up on every call, which showed in
/// profiles of the hot path. Register after the recorder is installed (before, they are no-ops).
pub struct RequestMetrics {
    requests: [[Counter; OUTCOMES.len()]; METHODS.len()],
    seconds: [Histogram; METHODS.len()],
    response_age: Histogram,
}

impl RequestMetrics {
    pub fn register() -> Self {
        RequestMetrics {
            requests: METHODS.map(|method| {
                OUTCOMES.map(|outcome| metrics::counter!(REQUESTS, "method" => method, "outcome" => outcome.as_str()))
            }),
            seconds: METHODS.map(|method| metrics::histogram!(REQUEST_SECONDS, "method" => method)),
            response_age: metrics::histogram!(RESPONSE_AGE_SECONDS),
        }
    }

    /// One request: `method` indexes [`METHODS`].
    pub fn request(&self, method: usize, outcome: ResponseStatus, seconds: f64) {
        let method = method.min(METHODS.len() - 1);
        let outcome = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.requests[method][outcome].increment(1);
        self.seconds[method].record(seconds);
    }

    pub fn response_age(&self, seconds: f64) {
        self.response_age.record(seconds);
    }
}

/// Handles for what the pipeline records on every cache hit (see [`RequestMetrics`]).
pub struct HitMetrics {
    pub raw_hit: Counter,
    pub local_hit: Counter,
    pub redis_hit: Counter,
    pub redis_miss: Counter,
    pub redis_get_seconds: Histogram,
}

impl HitMetrics {
    pub fn register() -> Self {
        HitMetrics {
            raw_hit: metrics::counter!(CACHE_LOOKUPS, "tier" => "local", "result" => "hit", "key" => "request"),
            local_hit: metrics::counter!(CACHE_LOOKUPS, "tier" => "local", "result" => "hit", "key" => "certid"),
            redis_hit: metrics::counter!(CACHE_LOOKUPS, "tier" => "redis", "result" => "hit"),
            redis_miss: metrics::counter!(CACHE_LOOKUPS, "tier" => "redis", "result" => "miss"),
            redis_get_seconds: metrics::histogram!(REDIS_SECONDS, "op" => "get"),
        }
    }
}

/// Handles for what every signature records, per issuer and signer (see [`RequestMetrics`]):
/// a cache drop signs tens of thousands of responses a second.
pub struct SigningMetrics {
    pub signatures: Counter,
    pub seconds: Histogram,
}

impl SigningMetrics {
    pub fn register(issuer: &str, signer: &str) -> Self {
        let labels = [("issuer", issuer.to_owned()), ("signer", signer.to_owned())];
        SigningMetrics {
            signatures: metrics::counter!(SIGNATURES, &labels),
            seconds: metrics::histogram!(SIGNATURE_SECONDS, &labels),
        }
    }
}

/// Counts one open OCSP connection for as long as it lives: actix keeps it in the
/// connection's extensions, which are dropped when the connection closes.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn opened() -> Self {
        metrics::gauge!(HTTP_CONNECTIONS).increment(1.0);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_CONNECTIONS).decrement(1.0);
    }
}
