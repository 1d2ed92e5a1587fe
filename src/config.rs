//! Configuration: a TOML file, overridden by environment variables, then validated.
//!
//! Sources, lowest precedence first:
//! 1. built-in defaults (the values in `deploy/jitocsp.toml.example`);
//! 2. the TOML file: `--config PATH` (must exist), else `jitocsp.toml` in the working
//!    directory if there is one;
//! 3. `DATABASE_URL` and `REDIS_URL` (ignored when empty);
//! 4. `JITOCSP_<SECTION>_<KEY>`, e.g. `JITOCSP_RESPONSES_VALIDITY=72h`,
//!    `JITOCSP_REDIS_NODES=10.0.0.1:6379,10.0.0.2:6379` (lists are comma-separated).
//!
//! Unknown sections and keys in the file, and `JITOCSP_<SECTION>_*` variables that name no key
//! of a known section, are errors. Other `JITOCSP_*` variables (`JITOCSP_PKCS11_PIN`,
//! `JITOCSP_TEST_*`, ...) are left alone.
//!
//! Secrets never come from the command line: passwords go into `DATABASE_URL`/`REDIS_URL`
//! (environment), or into a file named by `database.password_file` / `redis.password_file`
//! whose trimmed contents are inserted into the URLs at load time. `Debug` output and error
//! messages never show a password (see [`redact_url`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::redis::RedisMode;

/// The name of the config file looked for in the working directory when no path is given.
pub const DEFAULT_FILE: &str = "jitocsp.toml";

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "JITOCSP_";

/// CA/Browser Forum Baseline Requirements 4.9.10 count the validity interval inclusively
/// (nextUpdate - thisUpdate + 1 s): at least eight hours...
pub const MIN_VALIDITY: Duration = Duration::from_secs(8 * 3600 - 1);
/// ...and at most ten days.
pub const MAX_VALIDITY: Duration = Duration::from_secs(10 * 24 * 3600 - 1);

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

/// The whole configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub responses: ResponsesConfig,
    pub signing: SigningConfig,
    pub log: LogConfig,
    pub cdn: CdnConfig,
}

/// `[server]`: the HTTP listeners.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// OCSP listener.
    pub listen: String,
    /// `/metrics`, `/healthz`, `/readyz` listener.
    pub metrics_listen: String,
    /// Empty, or starts with '/' and does not end with '/'.
    pub path_prefix: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            path_prefix: String::new(),
            workers: 0,
        }
    }
}

/// `[database]`: Postgres, the source of truth.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Primary (read/write). After loading, contains the password from `password_file`.
    pub url: String,
    /// Replica for status reads; empty = `url`. Use [`DatabaseConfig::read_url`].
    pub read_url: String,
    /// File whose trimmed contents are the password; empty = none. Already applied to
    /// `url` and `read_url` by [`Config::load`].
    pub password_file: String,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
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

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://jitocsp@127.0.0.1:5432/jitocsp".into(),
            read_url: String::new(),
            password_file: String::new(),
            pool_size: 16,
            connect_timeout_ms: 2000,
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
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// `[redis]`: the shared response cache.
#[derive(Clone)]
pub struct RedisConfig {
    /// Single mode: the server. Cluster mode: the seed when `nodes` is empty.
    pub url: String,
    pub mode: RedisMode,
    /// Cluster seeds (or shards). After loading, every entry is a URL: a bare `host:port`
    /// gets the scheme and user name of `url`, and the password from `password_file`.
    pub nodes: Vec<String>,
    /// File whose trimmed contents are the password; empty = none. Already applied to
    /// `url` and `nodes` by [`Config::load`].
    pub password_file: String,
    pub timeout_ms: u64,
}

impl RedisConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
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
            .finish()
    }
}

/// `[cache]`: the in-process tier and the Redis key layout.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Entries in the in-process tier; 0 = no local tier.
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
#[derive(Clone, Debug)]
pub struct ResponsesConfig {
    /// nextUpdate - thisUpdate.
    pub validity: Duration,
    /// A cached response older than this is re-signed.
    pub refresh_after: Duration,
    /// Upper bound on `Cache-Control: max-age`; None = seconds to nextUpdate.
    pub max_age_cap: Option<Duration>,
    /// Answer for a serial the authority has no row for.
    pub unissued: UnissuedPolicy,
    /// How long after notAfter an expired certificate still gets its status.
    pub expired_grace: Duration,
    pub nonce: NoncePolicy,
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
        }
    }
}

/// What a serial with no row in `certificates` gets. Never "good".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnissuedPolicy {
    /// OCSP `unauthorized` error response (RFC 5019, Let's Encrypt).
    #[default]
    Unauthorized,
    /// certStatus `unknown`.
    Unknown,
    /// certStatus `revoked` with the extended-revoked extension (RFC 6960 4.4.8).
    Revoked,
}

impl UnissuedPolicy {
    pub const NAMES: &'static [&'static str] = &["unauthorized", "unknown", "revoked"];

    pub fn as_str(self) -> &'static str {
        match self {
            UnissuedPolicy::Unauthorized => "unauthorized",
            UnissuedPolicy::Unknown => "unknown",
            UnissuedPolicy::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "unauthorized" => Some(UnissuedPolicy::Unauthorized),
            "unknown" => Some(UnissuedPolicy::Unknown),
            "revoked" => Some(UnissuedPolicy::Revoked),
            _ => None,
        }
    }
}

/// Whether request nonces are echoed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoncePolicy {
    /// Ignore nonces; responses stay cacheable.
    #[default]
    Ignore,
    /// Echo 1..128-octet nonces in a freshly signed, uncached response.
    Echo,
}

impl NoncePolicy {
    pub const NAMES: &'static [&'static str] = &["ignore", "echo"];

    pub fn as_str(self) -> &'static str {
        match self {
            NoncePolicy::Ignore => "ignore",
            NoncePolicy::Echo => "echo",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ignore" => Some(NoncePolicy::Ignore),
            "echo" => Some(NoncePolicy::Echo),
            _ => None,
        }
    }
}

/// `[signing]`: back-pressure in front of the signers.
#[derive(Clone, Debug)]
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
    pub p256_backend: crate::signer::P256Backend,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            max_in_flight: 64,
            max_waiting: 1024,
            pkcs11_sessions: 4,
            pkcs11_retry_ms: 1000,
            p256_backend: crate::signer::P256Backend::Ring,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug)]
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

/// `[cdn]`: telling the CDN in front of jitocsp to drop a certificate's responses when its
/// status changes (see `crate::hooks`).
#[derive(Clone)]
pub struct CdnConfig {
    /// Public base URL of the OCSP service as clients and the CDN see it (the certificates'
    /// AIA OCSP URL, path prefix included, no trailing '/'); "" = the hooks get no URLs.
    pub base_url: String,
    /// Run with `sh -c` per changed certificate, `$1` = purge tag, `$2`... = GET URLs; "" = none.
    pub purge_command: String,
    /// `http://` URL that gets a JSON POST per changed certificate; "" = none.
    pub purge_url: String,
    /// Longest one hook call may take before it counts as failed.
    pub purge_timeout: Duration,
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
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Why the configuration could not be loaded. Every message names the file or environment
/// variable and the key; none contains a password.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("config file {}: invalid TOML{location}: {message}", path.display())]
    Syntax { path: PathBuf, location: String, message: String },

    #[error("config file {}: unknown section [{section}] (known sections: {known})", path.display())]
    UnknownSection { path: PathBuf, section: String, known: String },

    #[error("config file {}: `{section}` must be a section ([{section}]), not a {found}", path.display())]
    NotASection { path: PathBuf, section: String, found: String },

    #[error("config file {}: unknown key `{key}` in section [{section}] (known keys: {known})", path.display())]
    UnknownKey { path: PathBuf, section: String, key: String, known: String },

    #[error(
        "environment variable {var}: section [{section}] has no key `{key}` \
         (known keys: {known}; variables are JITOCSP_<SECTION>_<KEY>)"
    )]
    UnknownEnv { var: String, section: String, key: String, known: String },

    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { var: String },

    #[error("{key} (set by {origin}): {message}")]
    Invalid { key: String, origin: String, message: String },

    #[error("{key} (set by {origin}): cannot read password file {}: {source}", path.display())]
    PasswordFile { key: String, origin: String, path: PathBuf, source: std::io::Error },
}

/// How an environment value is turned into a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Float,
    List,
}

/// Every section and key. Adding a key: here, in `Config::build`, in the example file.
const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[("listen", Kind::Str), ("metrics_listen", Kind::Str), ("path_prefix", Kind::Str), ("workers", Kind::Int)],
    ),
    (
        "database",
        &[
            ("url", Kind::Str),
            ("read_url", Kind::Str),
            ("password_file", Kind::Str),
            ("pool_size", Kind::Int),
            ("connect_timeout_ms", Kind::Int),
        ],
    ),
    (
        "redis",
        &[
            ("url", Kind::Str),
            ("mode", Kind::Str),
            ("nodes", Kind::List),
            ("password_file", Kind::Str),
            ("timeout_ms", Kind::Int),
        ],
    ),
    ("cache", &[("local_entries", Kind::Int), ("key_prefix", Kind::Str)]),
    (
        "responses",
        &[
            ("validity", Kind::Str),
            ("refresh_after", Kind::Str),
            ("max_age_cap", Kind::Str),
            ("unissued", Kind::Str),
            ("expired_grace", Kind::Str),
            ("nonce", Kind::Str),
        ],
    ),
    (
        "signing",
        &[
            ("max_in_flight", Kind::Int),
            ("max_waiting", Kind::Int),
            ("pkcs11_sessions", Kind::Int),
            ("pkcs11_retry_ms", Kind::Int),
            ("p256_backend", Kind::Str),
        ],
    ),
    ("log", &[("format", Kind::Str), ("level", Kind::Str), ("request_sample", Kind::Float)]),
    (
        "cdn",
        &[
            ("base_url", Kind::Str),
            ("purge_command", Kind::Str),
            ("purge_url", Kind::Str),
            ("purge_timeout", Kind::Str),
        ],
    ),
];

fn section_keys(section: &str) -> Option<&'static [(&'static str, Kind)]> {
    SCHEMA.iter().find(|(s, _)| *s == section).map(|(_, keys)| *keys)
}

fn known_sections() -> String {
    SCHEMA.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
}

fn known_keys(section: &str) -> String {
    section_keys(section).unwrap_or(&[]).iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    Default,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// The merged raw values, keyed by (section, key).
struct Sources {
    values: BTreeMap<(&'static str, &'static str), (toml::Value, Origin)>,
}

type Key = (&'static str, &'static str);

fn key_name((section, key): Key) -> String {
    format!("{section}.{key}")
}

impl Sources {
    fn origin(&self, k: Key) -> Origin {
        self.values.get(&k).map(|(_, o)| o.clone()).unwrap_or(Origin::Default)
    }

    fn invalid(&self, k: Key, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { key: key_name(k), origin: self.origin(k).to_string(), message: message.into() }
    }

    fn string(&self, k: Key) -> Result<Option<String>, ConfigError> {
        match self.values.get(&k) {
            None => Ok(None),
            Some((toml::Value::String(s), _)) => Ok(Some(s.clone())),
            Some((v, _)) => Err(self.invalid(k, format!("expected a string, found {}", v.type_str()))),
        }
    }

    fn int<T: TryFrom<i64>>(&self, k: Key) -> Result<Option<T>, ConfigError> {
        match self.values.get(&k) {
            None => Ok(None),
            Some((toml::Value::Integer(i), _)) => T::try_from(*i)
                .map(Some)
                .map_err(|_| self.invalid(k, format!("{i} is out of range (expected a non-negative integer)"))),
            Some((v, _)) => Err(self.invalid(k, format!("expected a non-negative integer, found {}", v.type_str()))),
        }
    }

    fn float(&self, k: Key) -> Result<Option<f64>, ConfigError> {
        match self.values.get(&k) {
            None => Ok(None),
            Some((toml::Value::Float(f), _)) => Ok(Some(*f)),
            Some((toml::Value::Integer(i), _)) => Ok(Some(*i as f64)),
            Some((v, _)) => Err(self.invalid(k, format!("expected a number, found {}", v.type_str()))),
        }
    }

    fn list(&self, k: Key) -> Result<Option<Vec<String>>, ConfigError> {
        match self.values.get(&k) {
            None => Ok(None),
            Some((toml::Value::Array(items), _)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(self.invalid(k, format!("expected a list of strings, found a {}", other.type_str()))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some((v, _)) => Err(self.invalid(k, format!("expected a list of strings, found {}", v.type_str()))),
        }
    }

    fn duration(&self, k: Key) -> Result<Option<Duration>, ConfigError> {
        match self.string(k)? {
            None => Ok(None),
            Some(s) => parse_duration(&s).map(Some).map_err(|m| self.invalid(k, m)),
        }
    }

    fn choice<T>(&self, k: Key, parse: fn(&str) -> Option<T>, names: &[&str]) -> Result<Option<T>, ConfigError> {
        match self.string(k)? {
            None => Ok(None),
            Some(s) => parse(&s)
                .map(Some)
                .ok_or_else(|| self.invalid(k, format!("unknown value {s:?}; expected one of: {}", names.join(", ")))),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration {s:?} ({e}); expected a number with a unit, e.g. \"96h\", \"30m\", \"10s\", \"1h30m\""
        )
    })
}

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Config {
    /// Loads the configuration: the file at `path` (which must exist), else `jitocsp.toml` in
    /// the working directory if present, else the defaults; then the process environment's
    /// overrides; then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !is_relevant_env(name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => env.push((name.to_string(), value)),
                Err(_) => return Err(ConfigError::EnvNotUnicode { var: name.to_string() }),
            }
        }
        Self::load_from(path, env)
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_FILE);
                p.is_file().then_some(p)
            }
        };
        Self::load_inner(file.as_deref(), env)
    }

    /// Loads `file` (if any) and `env`; never looks at the working directory.
    fn load_inner(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut sources = Sources { values: BTreeMap::new() };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            read_file(&mut sources, path, &text)?;
        }
        read_env(&mut sources, env)?;
        let mut config = Config::build(&sources)?;
        config.apply_password_files(&sources)?;
        config.normalize_redis_nodes(&sources)?;
        config.validate(&sources)?;
        Ok(config)
    }

    fn build(s: &Sources) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(c.server.listen, s.string(("server", "listen"))?);
        set!(c.server.metrics_listen, s.string(("server", "metrics_listen"))?);
        set!(c.server.path_prefix, s.string(("server", "path_prefix"))?);
        set!(c.server.workers, s.int(("server", "workers"))?);

        set!(c.database.url, s.string(("database", "url"))?);
        set!(c.database.read_url, s.string(("database", "read_url"))?);
        set!(c.database.password_file, s.string(("database", "password_file"))?);
        set!(c.database.pool_size, s.int(("database", "pool_size"))?);
        set!(c.database.connect_timeout_ms, s.int(("database", "connect_timeout_ms"))?);

        set!(c.redis.url, s.string(("redis", "url"))?);
        if let Some(mode) = s.string(("redis", "mode"))? {
            c.redis.mode = toml::Value::String(mode.clone()).try_into::<RedisMode>().map_err(|_| {
                s.invalid(
                    ("redis", "mode"),
                    format!("unknown value {mode:?}; expected one of: single, cluster, sharded"),
                )
            })?;
        }
        set!(c.redis.nodes, s.list(("redis", "nodes"))?);
        set!(c.redis.password_file, s.string(("redis", "password_file"))?);
        set!(c.redis.timeout_ms, s.int(("redis", "timeout_ms"))?);

        set!(c.cache.local_entries, s.int(("cache", "local_entries"))?);
        set!(c.cache.key_prefix, s.string(("cache", "key_prefix"))?);

        set!(c.responses.validity, s.duration(("responses", "validity"))?);
        set!(c.responses.refresh_after, s.duration(("responses", "refresh_after"))?);
        if let Some(cap) = s.string(("responses", "max_age_cap"))? {
            c.responses.max_age_cap = if cap.trim().is_empty() {
                None
            } else {
                Some(parse_duration(&cap).map_err(|m| s.invalid(("responses", "max_age_cap"), m))?)
            };
        }
        set!(c.responses.unissued, s.choice(("responses", "unissued"), UnissuedPolicy::parse, UnissuedPolicy::NAMES)?);
        set!(c.responses.expired_grace, s.duration(("responses", "expired_grace"))?);
        set!(c.responses.nonce, s.choice(("responses", "nonce"), NoncePolicy::parse, NoncePolicy::NAMES)?);

        set!(c.signing.max_in_flight, s.int(("signing", "max_in_flight"))?);
        set!(c.signing.max_waiting, s.int(("signing", "max_waiting"))?);
        set!(c.signing.pkcs11_sessions, s.int(("signing", "pkcs11_sessions"))?);
        set!(c.signing.pkcs11_retry_ms, s.int(("signing", "pkcs11_retry_ms"))?);
        set!(
            c.signing.p256_backend,
            s.choice(
                ("signing", "p256_backend"),
                crate::signer::P256Backend::parse,
                crate::signer::P256Backend::NAMES
            )?
        );

        set!(c.log.format, s.choice(("log", "format"), LogFormat::parse, LogFormat::NAMES)?);
        set!(c.log.level, s.string(("log", "level"))?);
        set!(c.log.request_sample, s.float(("log", "request_sample"))?);

        set!(c.cdn.base_url, s.string(("cdn", "base_url"))?.map(|u| u.trim_end_matches('/').to_owned()));
        set!(c.cdn.purge_command, s.string(("cdn", "purge_command"))?);
        set!(c.cdn.purge_url, s.string(("cdn", "purge_url"))?);
        set!(c.cdn.purge_timeout, s.duration(("cdn", "purge_timeout"))?);
        Ok(c)
    }

    fn apply_password_files(&mut self, s: &Sources) -> Result<(), ConfigError> {
        if let Some(password) = read_password_file(s, ("database", "password_file"), &self.database.password_file)? {
            self.database.url = with_password(s, ("database", "url"), &self.database.url, &password)?;
            if !self.database.read_url.is_empty() {
                self.database.read_url =
                    with_password(s, ("database", "read_url"), &self.database.read_url, &password)?;
            }
        }
        if let Some(password) = read_password_file(s, ("redis", "password_file"), &self.redis.password_file)? {
            self.redis.url = with_password(s, ("redis", "url"), &self.redis.url, &password)?;
            self.redis.nodes = std::mem::take(&mut self.redis.nodes)
                .into_iter()
                .map(|node| {
                    if node.contains("://") {
                        with_password(s, ("redis", "nodes"), &node, &password)
                    } else {
                        Ok(node) // gets the URL's user info in normalize_redis_nodes
                    }
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Turns bare `host:port` nodes into URLs with the scheme and user info of `redis.url`.
    fn normalize_redis_nodes(&mut self, s: &Sources) -> Result<(), ConfigError> {
        let k = ("redis", "nodes");
        let (scheme, userinfo) = match split_url(&self.redis.url) {
            Some(u) if matches!(u.scheme, "redis" | "rediss") => (u.scheme, u.userinfo.unwrap_or("")),
            _ => ("redis", ""),
        };
        for node in &mut self.redis.nodes {
            let trimmed = node.trim();
            if trimmed.is_empty() {
                return Err(s.invalid(k, "contains an empty entry"));
            }
            if trimmed.contains("://") {
                *node = trimmed.to_string();
                continue;
            }
            if trimmed.contains(['/', '@', '?', '#']) || trimmed.chars().any(char::is_whitespace) {
                return Err(
                    s.invalid(k, format!("entry {:?} is neither host:port nor a redis:// URL", redact_url(trimmed)))
                );
            }
            *node = if userinfo.is_empty() {
                format!("{scheme}://{trimmed}")
            } else {
                format!("{scheme}://{userinfo}@{trimmed}")
            };
        }
        Ok(())
    }

    fn validate(&self, s: &Sources) -> Result<(), ConfigError> {
        // [server]
        for k in [("server", "listen"), ("server", "metrics_listen")] {
            let v = if k.1 == "listen" { &self.server.listen } else { &self.server.metrics_listen };
            if v.parse::<SocketAddr>().is_err() {
                return Err(s.invalid(k, format!("{v:?} is not an IP:port socket address (e.g. \"127.0.0.1:8080\")")));
            }
        }
        if self.server.listen == self.server.metrics_listen && !self.server.listen.ends_with(":0") {
            return Err(s.invalid(
                ("server", "metrics_listen"),
                format!("{:?} is also server.listen; metrics need their own address", self.server.metrics_listen),
            ));
        }
        let p = &self.server.path_prefix;
        if !p.is_empty()
            && (!p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#']) || p.contains(char::is_whitespace))
        {
            return Err(s.invalid(
                ("server", "path_prefix"),
                format!("{p:?} must be empty or start with '/' and not end with '/' (e.g. \"/ocsp\")"),
            ));
        }

        // [database]
        check_postgres_url(s, ("database", "url"), &self.database.url, false)?;
        check_postgres_url(s, ("database", "read_url"), &self.database.read_url, true)?;
        if self.database.pool_size < 1 {
            return Err(s.invalid(("database", "pool_size"), "must be at least 1"));
        }
        if self.database.connect_timeout_ms < 1 {
            return Err(s.invalid(("database", "connect_timeout_ms"), "must be at least 1 (milliseconds)"));
        }

        // [redis]
        check_redis_url(s, ("redis", "url"), &self.redis.url)?;
        for node in &self.redis.nodes {
            check_redis_url(s, ("redis", "nodes"), node)?;
        }
        if self.redis.timeout_ms < 1 {
            return Err(s.invalid(("redis", "timeout_ms"), "must be at least 1 (milliseconds)"));
        }

        // [cache]
        let kp = &self.cache.key_prefix;
        if kp.is_empty() || kp.contains(['{', '}']) || kp.contains(char::is_whitespace) {
            return Err(s.invalid(
                ("cache", "key_prefix"),
                format!("{kp:?} must be non-empty, without '{{', '}}' or whitespace (braces would break Redis Cluster hash tags)"),
            ));
        }

        // [responses]
        let r = &self.responses;
        if r.validity < MIN_VALIDITY || r.validity > MAX_VALIDITY {
            return Err(s.invalid(
                ("responses", "validity"),
                format!(
                    "{} is out of range: must be between {} and {} (CA/Browser Forum BR 4.9.10)",
                    show(r.validity),
                    show(MIN_VALIDITY),
                    show(MAX_VALIDITY)
                ),
            ));
        }
        if r.refresh_after.is_zero() || r.refresh_after > max_refresh_after(r.validity) {
            return Err(s.invalid(
                ("responses", "refresh_after"),
                format!(
                    "{} must be greater than 0s and at most {} with responses.validity = {} (set by {}): \
                     CA/Browser Forum BR 4.9.10 wants a response refreshed at least 8 h before its \
                     nextUpdate and at most 4 days after its thisUpdate (half the interval before \
                     nextUpdate when it is under 16 h)",
                    show(r.refresh_after),
                    show(max_refresh_after(r.validity)),
                    show(r.validity),
                    s.origin(("responses", "validity"))
                ),
            ));
        }
        if r.max_age_cap.is_some_and(|cap| cap.is_zero()) {
            return Err(s.invalid(("responses", "max_age_cap"), "must be greater than 0s, or \"\" for no cap"));
        }

        // [signing]
        if self.signing.max_in_flight < 1 {
            return Err(s.invalid(("signing", "max_in_flight"), "must be at least 1"));
        }
        if !(1..=1024).contains(&self.signing.pkcs11_sessions) {
            return Err(s.invalid(("signing", "pkcs11_sessions"), "must be between 1 and 1024"));
        }
        if !(10..=600_000).contains(&self.signing.pkcs11_retry_ms) {
            return Err(s.invalid(("signing", "pkcs11_retry_ms"), "must be between 10 and 600000"));
        }

        // [log]
        if self.log.level.trim().is_empty() {
            return Err(s.invalid(("log", "level"), "must not be empty (e.g. \"info\")"));
        }
        let sample = self.log.request_sample;
        if !(0.0..=1.0).contains(&sample) {
            return Err(s.invalid(("log", "request_sample"), format!("{sample} must be between 0.0 and 1.0")));
        }

        // [cdn]
        let base = &self.cdn.base_url;
        if !base.is_empty()
            && (!(base.starts_with("http://") || base.starts_with("https://"))
                || base.contains(['?', '#'])
                || base.contains(char::is_whitespace))
        {
            return Err(s.invalid(
                ("cdn", "base_url"),
                format!("{base:?} must be \"\" or an http:// or https:// URL without query (e.g. \"http://ocsp.example.com\")"),
            ));
        }
        let url = &self.cdn.purge_url;
        if !url.is_empty() && (!url.starts_with("http://") || url.contains(char::is_whitespace)) {
            return Err(s.invalid(
                ("cdn", "purge_url"),
                format!(
                    "{} must be \"\" or an http:// URL (for an https API, call it from cdn.purge_command, e.g. with curl)",
                    redact_url(url)
                ),
            ));
        }
        let timeout = self.cdn.purge_timeout;
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err(s.invalid(("cdn", "purge_timeout"), format!("{} must be between 1ms and 5m", show(timeout))));
        }
        Ok(())
    }
}

fn is_relevant_env(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) || name == "DATABASE_URL" || name == "REDIS_URL"
}

fn read_file(sources: &mut Sources, path: &Path, text: &str) -> Result<(), ConfigError> {
    // Parse into a plain table first: the error text of a typed deserializer quotes the
    // offending line, which could hold a password.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let location = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        ConfigError::Syntax { path: path.to_path_buf(), location, message: e.message().trim().to_string() }
    })?;
    for (section, value) in table {
        let Some((sec, keys)) = SCHEMA.iter().find(|(s, _)| *s == section) else {
            return Err(ConfigError::UnknownSection { path: path.to_path_buf(), section, known: known_sections() });
        };
        let toml::Value::Table(entries) = value else {
            return Err(ConfigError::NotASection {
                path: path.to_path_buf(),
                found: value.type_str().to_string(),
                section,
            });
        };
        for (key, value) in entries {
            let Some((k, _)) = keys.iter().find(|(k, _)| *k == key) else {
                return Err(ConfigError::UnknownKey { path: path.to_path_buf(), known: known_keys(sec), section, key });
            };
            sources.values.insert((sec, k), (value, Origin::File(path.to_path_buf())));
        }
    }
    Ok(())
}

fn read_env(sources: &mut Sources, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let mut generic = Vec::new();
    let mut specific = Vec::new();
    for (name, value) in env {
        match name.as_str() {
            "DATABASE_URL" | "REDIS_URL" if !value.is_empty() => generic.push((name, value)),
            _ if name.starts_with(ENV_PREFIX) => specific.push((name, value)),
            _ => {}
        }
    }
    // DATABASE_URL / REDIS_URL first, so JITOCSP_DATABASE_URL / JITOCSP_REDIS_URL win.
    for (name, value) in generic {
        let key = if name == "DATABASE_URL" { ("database", "url") } else { ("redis", "url") };
        sources.values.insert(key, (toml::Value::String(value), Origin::Env(name)));
    }
    for (name, value) in specific {
        let rest = &name[ENV_PREFIX.len()..];
        let Some((section, keys)) = SCHEMA.iter().find(|(s, _)| {
            rest.len() > s.len() && rest.as_bytes()[s.len()] == b'_' && rest[..s.len()] == s.to_ascii_uppercase()
        }) else {
            continue; // not ours: JITOCSP_PKCS11_PIN, JITOCSP_TEST_*, ...
        };
        let key_part = &rest[section.len() + 1..];
        let Some((key, kind)) = keys.iter().find(|(k, _)| k.to_ascii_uppercase() == key_part) else {
            return Err(ConfigError::UnknownEnv {
                key: key_part.to_ascii_lowercase(),
                section: section.to_string(),
                known: known_keys(section),
                var: name,
            });
        };
        let origin = Origin::Env(name.clone());
        let value = match kind {
            Kind::Str => toml::Value::String(value),
            Kind::Int => match value.trim().parse::<i64>() {
                Ok(i) => toml::Value::Integer(i),
                Err(_) => {
                    return Err(ConfigError::Invalid {
                        key: format!("{section}.{key}"),
                        origin: origin.to_string(),
                        message: format!("{value:?} is not a non-negative integer"),
                    })
                }
            },
            Kind::Float => match value.trim().parse::<f64>() {
                Ok(f) => toml::Value::Float(f),
                Err(_) => {
                    return Err(ConfigError::Invalid {
                        key: format!("{section}.{key}"),
                        origin: origin.to_string(),
                        message: format!("{value:?} is not a number"),
                    })
                }
            },
            Kind::List => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
        };
        sources.values.insert((section, key), (value, origin));
    }
    Ok(())
}

fn read_password_file(s: &Sources, k: Key, path: &str) -> Result<Option<String>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let contents = std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
        key: key_name(k),
        origin: s.origin(k).to_string(),
        path: PathBuf::from(path),
        source,
    })?;
    let password = contents.trim();
    if password.is_empty() {
        return Err(s.invalid(k, format!("password file {path} is empty")));
    }
    Ok(Some(password.to_string()))
}

/// The parts of `scheme://[userinfo@]host/rest` that matter here.
struct UrlParts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    /// Byte offset where the authority starts (just after "://").
    authority_start: usize,
    /// Byte offset just after the authority.
    authority_end: usize,
}

fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let sep = url.find("://")?;
    let scheme = &url[..sep];
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    let authority_start = sep + 3;
    let authority_end = url[authority_start..].find(['/', '?', '#']).map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let userinfo = authority.rfind('@').map(|at| &authority[..at]);
    Some(UrlParts { scheme, userinfo, authority_start, authority_end })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` with `password` inserted. Errors if `url` already has a password.
fn with_password(s: &Sources, k: Key, url: &str, password: &str) -> Result<String, ConfigError> {
    let pw = percent_encode(password);
    let conflict = || {
        s.invalid(
            k,
            format!(
                "{} already contains a password, and a password_file is set; use one or the other",
                redact_url(url)
            ),
        )
    };
    let Some(parts) = split_url(url) else {
        // libpq key=value connection string (Postgres only).
        if k.0 == "database" {
            if kv_pairs(url).is_some_and(|pairs| pairs.iter().any(|(key, _, _)| *key == "password")) {
                return Err(conflict());
            }
            let escaped = password.replace('\\', "\\\\").replace('\'', "\\'");
            return Ok(format!("{url} password='{escaped}'"));
        }
        return Err(s.invalid(k, format!("{} is not a URL; cannot add the password to it", redact_url(url))));
    };
    if matches!(parts.scheme, "unix" | "redis+unix") {
        // redis-rs takes a Unix-socket password from the `pass` query parameter.
        if url.contains("?pass=") || url.contains("&pass=") {
            return Err(conflict());
        }
        let (base, fragment) = url.split_once('#').map_or((url, None), |(b, f)| (b, Some(f)));
        let join = if base.contains('?') { '&' } else { '?' };
        let mut out = format!("{base}{join}pass={pw}");
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        return Ok(out);
    }
    match parts.userinfo {
        Some(userinfo) => {
            let (user, existing) = userinfo.split_once(':').map_or((userinfo, None), |(u, p)| (u, Some(p)));
            if existing.is_some_and(|p| !p.is_empty()) {
                return Err(conflict());
            }
            let at = parts.authority_start + userinfo.len();
            Ok(format!("{}{user}:{pw}{}", &url[..parts.authority_start], &url[at..]))
        }
        None => Ok(format!("{}:{pw}@{}", &url[..parts.authority_start], &url[parts.authority_start..])),
    }
}

/// A libpq `key=value` connection string as (key, value, byte range of the value), or None if
/// it does not parse.
fn kv_pairs(s: &str) -> Option<Vec<(&str, String, std::ops::Range<usize>)>> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            return Some(out);
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        skip_ws(&mut i);
        if i >= bytes.len() || bytes[i] != b'=' || key.is_empty() {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        let value_start = i;
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                if i >= bytes.len() {
                    return None;
                }
                match bytes[i] {
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1] as char);
                        i += 2;
                    }
                    _ => {
                        let c = s[i..].chars().next()?;
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            value.push_str(&s[value_start..i]);
        }
        out.push((key, value, value_start..i));
    }
}

/// `url` with any password replaced by `***`: the password of `scheme://user:password@host`,
/// `password`/`pass` query parameters, and `password=` in a libpq key=value string. Use it
/// whenever a connection URL is logged.
pub fn redact_url(url: &str) -> String {
    const MASK: &str = "***";
    let Some(parts) = split_url(url) else {
        if url.is_empty() {
            return String::new();
        }
        return match kv_pairs(url) {
            Some(pairs) => {
                let mut out = url.to_string();
                for (key, _, range) in pairs.iter().rev() {
                    if *key == "password" {
                        out.replace_range(range.clone(), MASK);
                    }
                }
                out
            }
            None if url.contains("password") || url.contains('@') => "<unparseable, redacted>".to_string(),
            None => url.to_string(),
        };
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..parts.authority_start]);
    let authority = &url[parts.authority_start..parts.authority_end];
    match parts.userinfo {
        Some(userinfo) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[userinfo.len()..]);
        }
        None => out.push_str(authority),
    }
    let rest = &url[parts.authority_end..];
    let (before_fragment, fragment) = rest.split_once('#').map_or((rest, None), |(b, f)| (b, Some(f)));
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if matches!(name, "password" | "pass") => {
                        format!("{name}={MASK}")
                    }
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn check_postgres_url(s: &Sources, k: Key, url: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    if url.trim().is_empty() {
        if may_be_empty {
            return Ok(());
        }
        return Err(s.invalid(k, "must not be empty (e.g. \"postgres://jitocsp@127.0.0.1:5432/jitocsp\")"));
    }
    match split_url(url) {
        Some(p) if matches!(p.scheme, "postgres" | "postgresql") => Ok(()),
        Some(p) => Err(s.invalid(
            k,
            format!("{} has scheme {:?}; expected postgres:// or postgresql://", redact_url(url), p.scheme),
        )),
        None if kv_pairs(url).is_some_and(|pairs| !pairs.is_empty()) => Ok(()),
        None => Err(
            s.invalid(k, format!("{} is neither a postgres:// URL nor a key=value connection string", redact_url(url)))
        ),
    }
}

fn check_redis_url(s: &Sources, k: Key, url: &str) -> Result<(), ConfigError> {
    match split_url(url) {
        Some(p) if matches!(p.scheme, "redis" | "rediss" | "redis+unix" | "unix") => Ok(()),
        _ => Err(s.invalid(
            k,
            format!("{:?} is not a Redis URL (redis://, rediss://, redis+unix:// or unix://)", redact_url(url)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "jitocsp.toml", text);
        Config::load_inner(Some(&path), env(vars))
    }

    fn err_text(text: &str, vars: &[(&str, &str)]) -> String {
        load_text(text, vars).expect_err("expected an error").to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::load_inner(None, env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.metrics_listen, "127.0.0.1:9090");
        assert_eq!(c.server.path_prefix, "");
        assert_eq!(c.server.workers, 0);
        assert_eq!(c.database.url, "postgres://jitocsp@127.0.0.1:5432/jitocsp");
        assert_eq!(c.database.read_url, "");
        assert_eq!(c.database.read_url(), "postgres://jitocsp@127.0.0.1:5432/jitocsp");
        assert_eq!(c.database.pool_size, 16);
        assert_eq!(c.database.connect_timeout_ms, 2000);
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(c.redis.mode, RedisMode::Single);
        assert!(c.redis.nodes.is_empty());
        assert_eq!(c.redis.timeout_ms, 100);
        assert_eq!(c.cache.local_entries, 0);
        assert_eq!(c.cache.key_prefix, "ocsp");
        assert_eq!(c.responses.validity, Duration::from_secs(96 * 3600));
        assert_eq!(c.responses.refresh_after, Duration::from_secs(48 * 3600));
        assert_eq!(c.responses.max_age_cap, None);
        assert_eq!(c.responses.unissued, UnissuedPolicy::Unauthorized);
        assert_eq!(c.responses.expired_grace, Duration::ZERO);
        assert_eq!(c.responses.nonce, NoncePolicy::Ignore);
        assert_eq!(c.signing.max_in_flight, 64);
        assert_eq!(c.signing.max_waiting, 1024);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.request_sample, 0.0);
        assert_eq!(c.cdn.base_url, "");
        assert!(!c.cdn.enabled());
        assert_eq!(c.cdn.purge_timeout, Duration::from_secs(10));
        // Default::default() is the same thing.
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn explicit_path_must_exist() {
        let e = Config::load_from(Some(Path::new("/nonexistent/jitocsp.toml")), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/jitocsp.toml"), "{e}");
    }

    #[test]
    fn example_file_is_complete_and_gives_the_defaults() {
        let text = include_str!("../deploy/jitocsp.toml.example");
        let c = load_text(text, &[]).unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
        let table: toml::Table = text.parse().unwrap();
        for (section, keys) in SCHEMA {
            let t = table.get(*section).and_then(|v| v.as_table()).unwrap_or_else(|| panic!("[{section}] missing"));
            for (key, _) in *keys {
                assert!(t.contains_key(*key), "{section}.{key} missing from deploy/jitocsp.toml.example");
            }
        }
    }

    #[test]
    fn full_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = load_text(
            r#"
            [server]
            listen = "0.0.0.0:80"
            metrics_listen = "[::1]:9100"
            path_prefix = "/ocsp"
            workers = 4
            [database]
            url = "postgres://responder@db1:5432/ca"
            read_url = "postgresql://responder@db2:5432/ca"
            password_file = ""
            pool_size = 32
            connect_timeout_ms = 500
            [redis]
            url = "rediss://jitocsp@cache:6380"
            mode = "cluster"
            nodes = ["a:1", "redis://b:2"]
            password_file = ""
            timeout_ms = 250
            [cache]
            local_entries = 10000
            key_prefix = "ocsp-e1"
            [responses]
            validity = "72h"
            refresh_after = "1h30m"
            max_age_cap = "1h"
            unissued = "revoked"
            expired_grace = "30d"
            nonce = "echo"
            [signing]
            max_in_flight = 8
            max_waiting = 0
            [log]
            format = "json"
            level = "jitocsp=debug,info"
            request_sample = 0.25
            [cdn]
            base_url = "http://ocsp.example.com/ocsp/"
            purge_command = "/usr/local/bin/purge \"$1\""
            purge_url = "http://purger:8000/purge"
            purge_timeout = "3s"
            "#,
            &[],
        )
        .unwrap();
        drop(dir);
        assert_eq!(c.server.listen, "0.0.0.0:80");
        assert_eq!(c.server.metrics_listen, "[::1]:9100");
        assert_eq!(c.server.path_prefix, "/ocsp");
        assert_eq!(c.server.workers, 4);
        assert_eq!(c.database.url, "postgres://responder@db1:5432/ca");
        assert_eq!(c.database.read_url(), "postgresql://responder@db2:5432/ca");
        assert_eq!(c.database.pool_size, 32);
        assert_eq!(c.database.connect_timeout_ms, 500);
        assert_eq!(c.redis.url, "rediss://jitocsp@cache:6380");
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.nodes, vec!["rediss://jitocsp@a:1".to_string(), "redis://b:2".to_string()]);
        assert_eq!(c.redis.timeout_ms, 250);
        assert_eq!(c.cache.local_entries, 10000);
        assert_eq!(c.cache.key_prefix, "ocsp-e1");
        assert_eq!(c.responses.validity, Duration::from_secs(72 * 3600));
        assert_eq!(c.responses.refresh_after, Duration::from_secs(90 * 60));
        assert_eq!(c.responses.max_age_cap, Some(Duration::from_secs(3600)));
        assert_eq!(c.responses.unissued, UnissuedPolicy::Revoked);
        assert_eq!(c.responses.expired_grace, Duration::from_secs(30 * 86400));
        assert_eq!(c.responses.nonce, NoncePolicy::Echo);
        assert_eq!(c.signing.max_in_flight, 8);
        assert_eq!(c.signing.max_waiting, 0);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "jitocsp=debug,info");
        assert_eq!(c.log.request_sample, 0.25);
        assert_eq!(c.cdn.base_url, "http://ocsp.example.com/ocsp");
        assert_eq!(c.cdn.purge_command, "/usr/local/bin/purge \"$1\"");
        assert_eq!(c.cdn.purge_url, "http://purger:8000/purge");
        assert_eq!(c.cdn.purge_timeout, Duration::from_secs(3));
        assert!(c.cdn.enabled());
    }

    #[test]
    fn log_sample_and_cdn_validated() {
        assert_eq!(load_text("", &[("JITOCSP_LOG_REQUEST_SAMPLE", "1")]).unwrap().log.request_sample, 1.0);
        assert_eq!(load_text("[log]\nrequest_sample = 1\n", &[]).unwrap().log.request_sample, 1.0);
        let e = err_text("[log]\nrequest_sample = 1.5\n", &[]);
        assert!(e.contains("log.request_sample") && e.contains("between 0.0 and 1.0"), "{e}");
        let e = err_text("", &[("JITOCSP_LOG_REQUEST_SAMPLE", "half")]);
        assert!(e.contains("JITOCSP_LOG_REQUEST_SAMPLE") && e.contains("not a number"), "{e}");
        let e = err_text("[cdn]\nbase_url = \"ocsp.example.com\"\n", &[]);
        assert!(e.contains("cdn.base_url"), "{e}");
        let e = err_text("[cdn]\npurge_url = \"https://api.cdn.example/purge\"\n", &[]);
        assert!(e.contains("cdn.purge_url") && e.contains("purge_command"), "{e}");
        let e = err_text("[cdn]\npurge_timeout = \"0s\"\n", &[]);
        assert!(e.contains("cdn.purge_timeout"), "{e}");
        let c = load_text("", &[("JITOCSP_CDN_PURGE_URL", "http://u:secret@purger/p")]).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let e = err_text("[server]\nlisten = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n", &[]);
        assert!(e.contains("unknown key `listen_addr`"), "{e}");
        assert!(e.contains("[server]"), "{e}");
        assert!(e.contains("jitocsp.toml"), "{e}");
        let e = err_text("[servr]\nlisten = \"x\"\n", &[]);
        assert!(e.contains("unknown section [servr]"), "{e}");
        let e = err_text("server = 1\n", &[]);
        assert!(e.contains("`server` must be a section"), "{e}");
    }

    #[test]
    fn syntax_error_has_location_but_no_line_text() {
        let e = err_text("[database]\nurl = \"postgres://u:hunter2@h/db\n", &[]);
        assert!(e.contains("invalid TOML at line 2"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn unknown_env_key_is_named_and_other_vars_ignored() {
        let e = Config::load_inner(None, env(&[("JITOCSP_SERVER_FOO", "1")])).unwrap_err().to_string();
        assert!(e.contains("JITOCSP_SERVER_FOO"), "{e}");
        assert!(e.contains("`foo`"), "{e}");
        // Not a section of ours: ignored.
        Config::load_inner(
            None,
            env(&[
                ("JITOCSP_PKCS11_PIN", "1234"),
                ("JITOCSP_TEST_DATABASE_URL", "x"),
                ("JITOCSP_CONFIG", "/x"),
                ("JITOCSP_LOG", "x"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn env_overrides_file() {
        let c = load_text(
            "[server]\nlisten = \"127.0.0.1:1000\"\n[responses]\nvalidity = \"96h\"\n[cache]\nlocal_entries = 5\n",
            &[
                ("JITOCSP_SERVER_LISTEN", "127.0.0.1:2000"),
                ("JITOCSP_SERVER_METRICS_LISTEN", "127.0.0.1:2001"),
                ("JITOCSP_RESPONSES_VALIDITY", "72h"),
                ("JITOCSP_RESPONSES_MAX_AGE_CAP", "2h"),
                ("JITOCSP_REDIS_NODES", "a:1, b:2,"),
                ("JITOCSP_REDIS_MODE", "sharded"),
                ("JITOCSP_CACHE_LOCAL_ENTRIES", "1000"),
                ("JITOCSP_LOG_FORMAT", "json"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2000");
        assert_eq!(c.server.metrics_listen, "127.0.0.1:2001");
        assert_eq!(c.responses.validity, Duration::from_secs(72 * 3600));
        assert_eq!(c.responses.max_age_cap, Some(Duration::from_secs(7200)));
        assert_eq!(c.redis.nodes, vec!["redis://a:1".to_string(), "redis://b:2".to_string()]);
        assert_eq!(c.redis.mode, RedisMode::Sharded);
        assert_eq!(c.cache.local_entries, 1000);
        assert_eq!(c.log.format, LogFormat::Json);

        let e = err_text("", &[("JITOCSP_DATABASE_POOL_SIZE", "lots")]);
        assert!(e.contains("JITOCSP_DATABASE_POOL_SIZE") && e.contains("database.pool_size"), "{e}");
        // An empty JITOCSP_ value means "no cap" for max_age_cap.
        let c = load_text("[responses]\nmax_age_cap = \"1h\"\n", &[("JITOCSP_RESPONSES_MAX_AGE_CAP", "")]).unwrap();
        assert_eq!(c.responses.max_age_cap, None);
    }

    #[test]
    fn database_url_and_redis_url_honoured_and_specific_vars_win() {
        let file = "[database]\nurl = \"postgres://file@h/db\"\n[redis]\nurl = \"redis://file:6379\"\n";
        let c = load_text(file, &[("DATABASE_URL", "postgres://generic@h/db"), ("REDIS_URL", "redis://generic:6379")])
            .unwrap();
        assert_eq!(c.database.url, "postgres://generic@h/db");
        assert_eq!(c.redis.url, "redis://generic:6379");
        // The JITOCSP_ variable wins whatever the order.
        for vars in [
            [("JITOCSP_DATABASE_URL", "postgres://specific@h/db"), ("DATABASE_URL", "postgres://generic@h/db")],
            [("DATABASE_URL", "postgres://generic@h/db"), ("JITOCSP_DATABASE_URL", "postgres://specific@h/db")],
        ] {
            let c = load_text(file, &vars).unwrap();
            assert_eq!(c.database.url, "postgres://specific@h/db");
        }
        let c = load_text(file, &[("REDIS_URL", "redis://generic:1"), ("JITOCSP_REDIS_URL", "redis://specific:2")])
            .unwrap();
        assert_eq!(c.redis.url, "redis://specific:2");
        // An empty DATABASE_URL is ignored.
        let c = load_text(file, &[("DATABASE_URL", "")]).unwrap();
        assert_eq!(c.database.url, "postgres://file@h/db");
    }

    #[test]
    fn validity_out_of_range_rejected() {
        for v in ["7h59m", "10days 1s", "0s"] {
            let e = err_text(&format!("[responses]\nvalidity = \"{v}\"\nrefresh_after = \"1h\"\n"), &[]);
            assert!(e.contains("responses.validity") && e.contains("BR 4.9.10"), "{e}");
        }
        load_text("[responses]\nvalidity = \"8h\"\nrefresh_after = \"3h 59m\"\n", &[]).unwrap();
        let e = err_text("[responses]\nvalidity = \"8h\"\nrefresh_after = \"4h\"\n", &[]);
        assert!(e.contains("half the interval"), "under 16 h: refreshed half the interval before nextUpdate: {e}");
        load_text("[responses]\nvalidity = \"239h 59m 59s\"\n", &[]).unwrap();
        let e = err_text("[responses]\nvalidity = \"10days\"\n", &[]);
        assert!(
            e.contains("responses.validity") && e.contains("BR 4.9.10"),
            "ten days counted inclusively is over: {e}"
        );
        let e = err_text("[responses]\nvalidity = \"24h\"\nrefresh_after = \"17h\"\n", &[]);
        assert!(e.contains("responses.refresh_after") && e.contains("at most 16h"), "{e}");
        load_text("[responses]\nvalidity = \"24h\"\nrefresh_after = \"16h\"\n", &[]).unwrap();
        let e = err_text("[responses]\nvalidity = \"239h\"\nrefresh_after = \"97h\"\n", &[]);
        assert!(e.contains("at most 4days"), "four days after thisUpdate at the latest: {e}");
        let e = err_text("[responses]\nrefresh_after = \"0s\"\n", &[]);
        assert!(e.contains("responses.refresh_after"), "{e}");
        let e = err_text("[responses]\nmax_age_cap = \"0s\"\n", &[]);
        assert!(e.contains("responses.max_age_cap"), "{e}");
    }

    #[test]
    fn bad_duration_named() {
        let e = err_text("[responses]\nvalidity = \"96 hours please\"\n", &[]);
        assert!(e.contains("responses.validity") && e.contains("jitocsp.toml"), "{e}");
        assert!(e.contains("96 hours please"), "{e}");
        let e = err_text("", &[("JITOCSP_RESPONSES_EXPIRED_GRACE", "3x")]);
        assert!(e.contains("responses.expired_grace") && e.contains("JITOCSP_RESPONSES_EXPIRED_GRACE"), "{e}");
        let e = err_text("[responses]\nvalidity = 96\n", &[]);
        assert!(e.contains("responses.validity") && e.contains("expected a string"), "{e}");
    }

    #[test]
    fn other_validation() {
        for (text, key) in [
            ("[server]\nlisten = \"localhost\"\n", "server.listen"),
            ("[server]\nmetrics_listen = \"127.0.0.1:8080\"\n", "server.metrics_listen"),
            ("[server]\npath_prefix = \"ocsp\"\n", "server.path_prefix"),
            ("[server]\npath_prefix = \"/ocsp/\"\n", "server.path_prefix"),
            ("[server]\nworkers = -1\n", "server.workers"),
            ("[database]\npool_size = 0\n", "database.pool_size"),
            ("[database]\nurl = \"mysql://x@y/z\"\n", "database.url"),
            ("[redis]\nurl = \"http://x\"\n", "redis.url"),
            ("[redis]\nmode = \"ring\"\n", "redis.mode"),
            ("[redis]\nnodes = [\"a/b\"]\n", "redis.nodes"),
            ("[cache]\nkey_prefix = \"\"\n", "cache.key_prefix"),
            ("[cache]\nkey_prefix = \"a{b}\"\n", "cache.key_prefix"),
            ("[cache]\nkey_prefix = \"a b\"\n", "cache.key_prefix"),
            ("[responses]\nunissued = \"good\"\n", "responses.unissued"),
            ("[responses]\nnonce = \"yes\"\n", "responses.nonce"),
            ("[signing]\nmax_in_flight = 0\n", "signing.max_in_flight"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
        ] {
            let e = err_text(text, &[]);
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = load_text("[server]\npath_prefix = \"/a/b\"\n[cache]\nlocal_entries = 0\n", &[]).unwrap();
        assert_eq!(c.server.path_prefix, "/a/b");
        // A key=value connection string is accepted.
        load_text("[database]\nurl = \"host=/run/postgresql user=jitocsp dbname=jitocsp\"\n", &[]).unwrap();
    }

    #[test]
    fn password_file_read() {
        let dir = tempfile::tempdir().unwrap();
        let db_pw = write(dir.path(), "db", "s3cr3t/@:!\n");
        let redis_pw = write(dir.path(), "redis", "  r-pass \n");
        let text = format!(
            "[database]\nurl = \"postgres://jitocsp@db:5432/jitocsp\"\nread_url = \"postgres://jitocsp@replica/jitocsp\"\npassword_file = \"{}\"\n\
             [redis]\nurl = \"redis://jitocsp@cache:6379\"\nnodes = [\"a:1\", \"redis://b:2\"]\npassword_file = \"{}\"\n",
            db_pw.display(),
            redis_pw.display()
        );
        let c = load_text(&text, &[]).unwrap();
        assert_eq!(c.database.url, "postgres://jitocsp:s3cr3t%2F%40%3A%21@db:5432/jitocsp");
        assert_eq!(c.database.read_url(), "postgres://jitocsp:s3cr3t%2F%40%3A%21@replica/jitocsp");
        assert_eq!(c.redis.url, "redis://jitocsp:r-pass@cache:6379");
        assert_eq!(c.redis.nodes, vec!["redis://jitocsp:r-pass@a:1".to_string(), "redis://:r-pass@b:2".to_string()]);

        // Via the environment too, and into a key=value string and a Unix-socket URL.
        let c = Config::load_inner(
            None,
            env(&[
                ("DATABASE_URL", "host=/run/postgresql user=jitocsp"),
                ("JITOCSP_DATABASE_PASSWORD_FILE", db_pw.to_str().unwrap()),
                ("REDIS_URL", "redis+unix:///run/redis.sock?db=1"),
                ("JITOCSP_REDIS_PASSWORD_FILE", redis_pw.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.url, "host=/run/postgresql user=jitocsp password='s3cr3t/@:!'");
        assert_eq!(c.redis.url, "redis+unix:///run/redis.sock?db=1&pass=r-pass");

        // Missing file: named, with the key and where it was set.
        let e = load_text("[database]\npassword_file = \"/nonexistent/pw\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("database.password_file") && e.contains("/nonexistent/pw"), "{e}");
        // A URL that already has a password conflicts.
        let e = load_text(
            &format!("[database]\npassword_file = \"{}\"\n", db_pw.display()),
            &[("DATABASE_URL", "postgres://u:zebra9@h/db")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already contains a password") && !e.contains("zebra9"), "{e}");
        // Empty file.
        let empty = write(dir.path(), "empty", "\n");
        let e = load_text(&format!("[redis]\npassword_file = \"{}\"\n", empty.display()), &[]).unwrap_err();
        assert!(e.to_string().contains("redis.password_file"), "{e}");
    }

    #[test]
    fn debug_does_not_leak_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let pw = write(dir.path(), "pw", "hunter2\n");
        let c = Config::load_inner(
            None,
            env(&[
                ("DATABASE_URL", "postgres://jitocsp:hunter2@db/jitocsp?sslmode=require"),
                ("JITOCSP_DATABASE_READ_URL", "host=replica password='hunter2 x' user=jitocsp"),
                ("JITOCSP_REDIS_PASSWORD_FILE", pw.to_str().unwrap()),
                ("JITOCSP_REDIS_NODES", "a:1,rediss://b:2"),
            ]),
        )
        .unwrap();
        let debug = format!("{c:?} {:#?}", c);
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("postgres://jitocsp:***@db/jitocsp?sslmode=require"), "{debug}");
        assert!(debug.contains("redis://:***@127.0.0.1:6379"), "{debug}");

        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://u@h"), "redis://u@h");
        assert_eq!(redact_url("unix:///s?db=1&pass=x#f"), "unix:///s?db=1&pass=***#f");
        assert_eq!(redact_url("postgres://u:p@w@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("host=h password=p user=u"), "host=h password=*** user=u");
        assert_eq!(redact_url("host=h password='unterminated"), "<unparseable, redacted>");

        // Nor do validation errors.
        let e = err_text("", &[("REDIS_URL", "http://u:hunter2@h")]);
        assert!(e.contains("redis.url") && e.contains("REDIS_URL") && !e.contains("hunter2"), "{e}");
    }
}
