//! The authoritative status of certificates: Postgres, behind a small trait.

pub mod batch;
pub mod postgres;

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::ocsp::RevocationReason;
use crate::serial::Serial;

/// What the authority knows about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRecord {
    pub not_after: DateTime<Utc>,
    pub revocation: Option<Revocation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub at: DateTime<Utc>,
    pub reason: RevocationReason,
}

/// The store is unreachable or answered nonsense. Requests that need it get tryLater.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("batched status read: {0}")]
    Batched(String),
    #[error("row for issuer {issuer_id} serial {serial} has invalid reason code {code}")]
    BadReason { issuer_id: i32, serial: Serial, code: i16 },
}

/// Reads certificate status. Generic in the pipeline, so tests can use an in-memory map.
pub trait StatusStore: Send + Sync + 'static {
    /// The status of each (issuer, serial), in order, `None` where the authority has no row,
    /// and the moment of the read by the store's clock: responses remember it, so that a
    /// change committed later invalidates them.
    /// One round trip however many are asked, so concurrent misses can be batched.
    fn lookup(
        &self,
        keys: &[(i32, Serial)],
    ) -> impl Future<Output = Result<(Vec<Option<CertRecord>>, DateTime<Utc>), StoreError>> + Send;

    /// Cheap liveness probe for `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
