//! The authoritative status of certificates: Postgres, behind a small trait.

pub mod batch;
pub mod per_runtime;
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
    /// The status version of the row (`changed_version`, 0 if never changed since import).
    /// A response signed from this row is superseded by any change with a higher version.
    pub version: i64,
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
    #[error("postgres connection set-up: {0}")]
    Setup(#[from] crate::db::tls::PgTlsError),
    #[error("batched status read: {0}")]
    Batched(String),
    /// Reads are driven by Tokio tasks: a caller outside any runtime is a bug.
    #[error("postgres {0}")]
    NoRuntime(#[from] crate::runtime_local::NoRuntime),
    #[error("the replica reported an unreadable WAL position {0:?}")]
    BadLsn(String),
    #[error("row for issuer {issuer_id} serial {serial} has invalid reason code {code}")]
    BadReason { issuer_id: i32, serial: Serial, code: i16 },
}

/// A position in the primary's write-ahead log, as Postgres prints it (`16/B374D848`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses the `pg_lsn` text form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.split_once('/')?;
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// Which server a status read goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The read replica (`database.read_url`), or the primary when none is configured. Its
    /// answer may lag: the pipeline checks it against the changes it has heard of.
    Replica,
    /// The primary: what is committed is what is read.
    Primary,
}

/// The result of one status read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRead {
    /// One per key, in order; `None` where the authority has no row.
    pub records: Vec<Option<CertRecord>>,
    /// For a read served by a streaming standby: how far it had replayed the primary's WAL
    /// (`pg_last_wal_replay_lsn()`). `None` when the primary answered.
    pub replayed: Option<Lsn>,
}

/// Reads certificate status. Generic in the pipeline, so tests can use an in-memory map.
pub trait StatusStore: Send + Sync + 'static {
    /// The status of each (issuer, serial), in order, read from `from`.
    /// One round trip however many are asked, so concurrent misses can be batched.
    fn lookup(
        &self,
        keys: &[(i32, Serial)],
        from: ReadFrom,
    ) -> impl Future<Output = Result<StatusRead, StoreError>> + Send;

    /// Cheap liveness probe for `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn lsn_text_parses_in_wal_order() {
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("16/B374D848"), Some(Lsn(0x16_B374_D848)));
        assert!(Lsn::parse("1/0") > Lsn::parse("0/FFFFFFFF"));
        for bad in ["", "16", "x/1", "1/", "/1", "1/2/3"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
    }
}
