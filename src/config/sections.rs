//! The sections of the configuration file: one struct per `[section]`, its defaults (the
//! values in `deploy/jitocsp.toml.example`) and the enums its keys take.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::redact_url;
use crate::cache::redis::RedisMode;
use crate::signer::{P256Backend, SignerOptions};
use crate::tls::TlsFiles;

/// `[server]`: the HTTP listeners.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// OCSP listener.
    pub listen: String,
    /// `/metrics`, `/healthz`, `/readyz` listener.
    pub metrics_listen: String,
    /// Empty, or starts with '/' and does not end with '/'.
    pub path_prefix: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Time a client has from connecting (or from its previous request) to the end of its
    /// request head; a slower one is answered 408 and closed.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// Time a client has to send a POST body once its head has arrived; a slower one is
    /// answered 408 and closed.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Connections the OCSP listener holds open at once (per instance, shared out among the
    /// workers); further ones wait in the kernel's listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            path_prefix: String::new(),
            workers: 0,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_connections: 16_384,
        }
    }
}

/// `[database]`: Postgres, the source of truth.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Primary (read/write). After loading, contains the password from `password_file`.
    pub url: String,
    /// Replica for status reads; empty = `url`. Use [`DatabaseConfig::read_url`].
    pub read_url: String,
    /// File whose trimmed contents are the password; empty = none. Already applied to
    /// `url` and `read_url` by [`super::Config::load`].
    pub password_file: String,
    /// Connections per pool for the instance, divided among the HTTP workers
    /// (`crate::store::per_runtime`).
    pub pool_size: usize,
    /// Status reads in flight at once, on the replica and on the primary each (see
    /// `crate::store::batch`): misses that arrive while all are busy are read together in the
    /// next query. For the instance, divided among the HTTP workers as `pool_size` is.
    pub read_concurrency: usize,
    /// Milliseconds; the key predates the duration-string convention and keeps its unit.
    pub connect_timeout_ms: u64,
    /// PEM CA certificates that verify the server when `sslmode` asks for TLS; "" = the
    /// system roots. Applies to `url` and `read_url` (see `crate::db::tls`).
    pub tls_ca_file: String,
    /// PEM client certificate shown to the server; "" = none. Needs `tls_key_file`.
    pub tls_cert_file: String,
    /// PEM key of `tls_cert_file`, a secret file (owner-only mode); "" = none.
    pub tls_key_file: String,
}

impl DatabaseConfig {
    /// The URL for status reads: `read_url`, or `url` when it is empty.
    pub fn read_url(&self) -> &str {
        if self.read_url.is_empty() {
            &self.url
        } else {
            &self.read_url
        }
    }

    /// The TLS files of `[database]`.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::from_keys(&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file)
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://jitocsp@127.0.0.1:5432/jitocsp".into(),
            read_url: String::new(),
            password_file: String::new(),
            pool_size: 16,
            read_concurrency: 4,
            connect_timeout_ms: 2000,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("read_url", &redact_url(&self.read_url))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("read_concurrency", &self.read_concurrency)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// `[redis]`: the shared response cache.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Single mode: the server. Cluster mode: the seed when `nodes` is empty.
    pub url: String,
    pub mode: RedisMode,
    /// Cluster seeds (or shards). After loading, every entry is a URL: a bare `host:port`
    /// gets the scheme and user name of `url`, and the password from `password_file`.
    pub nodes: Vec<String>,
    /// File whose trimmed contents are the password; empty = none. Already applied to
    /// `url` and `nodes` by [`super::Config::load`].
    pub password_file: String,
    /// Milliseconds, like `database.connect_timeout_ms`.
    pub timeout_ms: u64,
    /// PEM CA certificates that verify `rediss://` servers; "" = the system roots.
    pub tls_ca_file: String,
    /// PEM client certificate for `rediss://`; "" = none. Needs `tls_key_file`.
    pub tls_cert_file: String,
    /// PEM key of `tls_cert_file`, a secret file (owner-only mode); "" = none.
    pub tls_key_file: String,
}

impl RedisConfig {
    /// The TLS files of `[redis]`.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::from_keys(&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file)
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            mode: RedisMode::Single,
            nodes: Vec::new(),
            password_file: String::new(),
            timeout_ms: 100,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| redact_url(n)).collect();
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("nodes", &nodes)
            .field("password_file", &self.password_file)
            .field("timeout_ms", &self.timeout_ms)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// `[cache]`: the in-process tier and the Redis key layout.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Entries in the in-process tier, and keys in its raw-request front (each); 0 = no local
    /// tier.
    pub local_entries: usize,
    /// Prefix of every Redis key.
    pub key_prefix: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { local_entries: 0, key_prefix: "ocsp".into() }
    }
}

/// `[responses]`: what is signed and for how long.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// nextUpdate - thisUpdate.
    #[serde(with = "duration")]
    pub validity: Duration,
    /// A cached response older than this is re-signed.
    #[serde(with = "duration")]
    pub refresh_after: Duration,
    /// Upper bound on `Cache-Control: max-age`; None (`""`) = seconds to nextUpdate.
    #[serde(with = "duration::optional")]
    pub max_age_cap: Option<Duration>,
    /// Answer for a serial the authority has no row for.
    pub unissued: UnissuedPolicy,
    /// How long after notAfter an expired certificate still gets its status.
    #[serde(with = "duration")]
    pub expired_grace: Duration,
    pub nonce: NoncePolicy,
    /// Status changes each responder remembers (16 bytes each) for a validity period; past
    /// that the oldest are forgotten, and cached responses that may predate them are served
    /// only after the primary confirms them (see `crate::feed::log`).
    pub max_remembered_changes: usize,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            validity: Duration::from_secs(96 * 3600),
            refresh_after: Duration::from_secs(48 * 3600),
            max_age_cap: None,
            unissued: UnissuedPolicy::Unauthorized,
            expired_grace: Duration::ZERO,
            nonce: NoncePolicy::Ignore,
            max_remembered_changes: crate::feed::log::DEFAULT_MAX_REMEMBERED,
        }
    }
}

/// What a serial with no row in `certificates` gets. Never "good".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnissuedPolicy {
    /// OCSP `unauthorized` error response (RFC 5019, Let's Encrypt).
    #[default]
    Unauthorized,
    /// certStatus `unknown`.
    Unknown,
    /// certStatus `revoked` with the extended-revoked extension (RFC 6960 4.4.8).
    Revoked,
}

/// Whether request nonces are echoed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoncePolicy {
    /// Ignore nonces; responses stay cacheable.
    #[default]
    Ignore,
    /// Echo 1..128-octet nonces in a freshly signed, uncached response.
    Echo,
}

/// `[signing]`: back-pressure in front of the signers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Signatures in progress at once (per instance).
    pub max_in_flight: usize,
    /// Requests allowed to wait for a signing slot; beyond that, tryLater.
    pub max_waiting: usize,
    /// Sessions (each on its own thread) per PKCS#11 key. Requests beyond them wait in the
    /// limiter above, so `max_in_flight` should be at least this (times the PKCS#11 issuers).
    pub pkcs11_sessions: usize,
    /// Retry interval of a PKCS#11 signer whose token is unavailable (and probe interval of an
    /// idle one), in milliseconds.
    pub pkcs11_retry_ms: u64,
    /// Implementation for software P-256 keys.
    pub p256_backend: P256Backend,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            max_in_flight: 64,
            max_waiting: 1024,
            pkcs11_sessions: 4,
            pkcs11_retry_ms: 1000,
            p256_backend: P256Backend::Ring,
        }
    }
}

impl From<&SigningConfig> for SignerOptions {
    fn from(c: &SigningConfig) -> Self {
        SignerOptions {
            pkcs11_sessions: c.pkcs11_sessions,
            pkcs11_retry: Duration::from_millis(c.pkcs11_retry_ms),
            p256_backend: c.p256_backend,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. "info" or "jitocsp=debug,info".
    pub level: String,
    /// Fraction (0.0..=1.0) of answered requests logged, one line each. Requests answered
    /// tryLater or internalError are always logged, whatever the sample.
    pub request_sample: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into(), request_sample: 0.0 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[cdn]`: telling the CDN in front of jitocsp to drop a certificate's responses when its
/// status changes (see `crate::purge::cdn`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdnConfig {
    /// Public base URL of the OCSP service as clients and the CDN see it (the certificates'
    /// AIA OCSP URL, path prefix included, no trailing '/'); "" = the hooks get no URLs.
    pub base_url: String,
    /// Run with `sh -c` once per batch: the purge tags as `$1`..., the batch JSON on stdin
    /// (see `crate::purge::cdn`); "" = none.
    pub purge_command: String,
    /// `http://` URL that gets a POST of the batch JSON; "" = none.
    pub purge_url: String,
    /// Longest one hook call may take before it counts as failed.
    #[serde(with = "duration")]
    pub purge_timeout: Duration,
    /// The most tags, and the most URLs, one call carries (how CDN purge APIs count).
    pub max_batch: usize,
    /// Hook calls started per second, at most, by one process.
    pub max_calls_per_second: f64,
}

impl CdnConfig {
    /// Whether any purge hook is configured.
    pub fn enabled(&self) -> bool {
        !self.purge_command.is_empty() || !self.purge_url.is_empty()
    }
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            base_url: String::new(),
            purge_command: String::new(),
            purge_url: String::new(),
            purge_timeout: Duration::from_secs(10),
            // Cloudflare takes at most 100 tags or URLs per purge call on every plan; Fastly
            // 256 surrogate keys; Akamai a 50 KB body. 100 fits all three.
            max_batch: 100,
            // Cloudflare's Pro plan sustains 5 purge calls/s (Business 10, Enterprise 50;
            // Akamai 50): a pace most accounts can keep without being refused.
            max_calls_per_second: 5.0,
        }
    }
}

impl fmt::Debug for CdnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CdnConfig")
            .field("base_url", &self.base_url)
            .field("purge_command", &self.purge_command)
            .field("purge_url", &redact_url(&self.purge_url))
            .field("purge_timeout", &self.purge_timeout)
            .field("max_batch", &self.max_batch)
            .field("max_calls_per_second", &self.max_calls_per_second)
            .finish()
    }
}

/// Duration keys are humantime strings ("96h", "1h30m", "0s").
pub(super) mod duration {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            format!(
                "invalid duration {s:?} ({e}); expected a number with a unit, e.g. \"96h\", \"30m\", \"10s\", \"1h30m\""
            )
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(Visitor)
    }

    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string with a duration, e.g. \"96h\"")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse(s).map_err(E::custom)
        }
    }

    /// An optional duration: `""` is none.
    pub mod optional {
        use std::time::Duration;

        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_str(""),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Option<Duration>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a string with a duration, e.g. \"1h\", or \"\" for none")
                }
                fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Option<Duration>, E> {
                    if s.trim().is_empty() {
                        return Ok(None);
                    }
                    super::parse(s).map(Some).map_err(E::custom)
                }
            }
            d.deserialize_str(Visitor)
        }
    }
}
