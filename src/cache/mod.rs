//! The response cache tiers: Redis (shared by every instance) and the optional in-process
//! local tier, whose front is keyed by the raw request ([`raw`]). None holds anything that
//! cannot be regenerated from Postgres and a signer.

pub mod keys;
pub mod local;
pub mod raw;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// A cache backend failed. Never fatal to a request: the pipeline falls through to Postgres
/// and the signer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("cache configuration: {0}")]
    Config(String),
    /// Redis connections are driven by a Tokio task: a caller outside any runtime is a bug.
    #[error("redis {0}")]
    NoRuntime(#[from] crate::runtime_local::NoRuntime),
    /// Boxed: a TLS error names files and carries rustls' error; the others are small.
    #[error("redis TLS set-up: {0}")]
    Tls(#[source] Box<crate::tls::TlsError>),
}

impl From<crate::tls::TlsError> for CacheError {
    fn from(e: crate::tls::TlsError) -> Self {
        CacheError::Tls(Box::new(e))
    }
}

/// A shared store of encoded responses, keyed by `keys::response_key`.
///
/// Generic (not `dyn`) so the hot path pays no boxing; tests substitute an in-memory map.
pub trait ResponseCache: Send + Sync + 'static {
    /// The stored value, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, CacheError>> + Send;
    /// Stores `value` for `ttl`, after which the cache must forget it.
    fn set(&self, key: &str, value: Bytes, ttl: Duration) -> impl Future<Output = Result<(), CacheError>> + Send;
    /// Deletes every key given; keys that do not exist are not an error.
    fn delete(&self, keys: &[String]) -> impl Future<Output = Result<(), CacheError>> + Send;
}
