//! Status changes, as a library: import, revoke, unrevoke, and the reason change to
//! keyCompromise. Each takes a *plan* (validated input) and returns an *outcome* (what
//! changed, what was skipped and why, the version taken) as data; the admin commands
//! (`crate::admin`) only build plans and print outcomes. Long work tells its progress through
//! [`Progress`], never by printing.
//!
//! # The transaction of a status change
//!
//! Revoke, reason change and unrevoke follow one pattern. The plan is complete before the
//! database is touched. Then, in ONE transaction: the rows are locked (`FOR UPDATE`) and
//! checked (an unknown serial fails the whole change, [`StatusError::is_input`], and nothing is
//! written); one status version is taken from `status_change_seq` (after the locks, so
//! versions grow along each row's changes); the status UPDATE with `changed_version` and
//! `changed_at = clock_timestamp()`; one `pending_purge_batches` row holding the changed
//! serials; per certificate changed, one `audit_log` row (and, with a CDN hook, one
//! `cdn_purges` row); notifications on
//! `jitocsp_status` carrying the version (one per couple of hundred certificates, see
//! [`crate::feed::payload`]); COMMIT. Only after the commit are the Redis keys deleted and
//! the CDN hook called ([`AfterCommit`]), and neither can undo or fail the change.
//!
//! The audit rows of a revocation are written last: appending to the audit chain takes a
//! lock held until COMMIT (sql/0004, sql/0006), so whatever comes before it can overlap with
//! another transaction's appends. A revocation computes the chain of its rows itself (under
//! that lock, from the head it read) and inserts them complete; the database checks every
//! row's hash, link, role and time in one pass before it keeps any (sql/0007), instead of
//! computing each row in a trigger. Other changes (unrevoke, reason changes, issuer events)
//! leave the chain to the trigger, as before.
//!
//! Responders compare versions, not times, so the length of the transaction does not matter
//! to them: a status read at a lower version than a change they heard of is never used.
//!
//! A revoke of many serials uses set-based statements (`serial = ANY($n)`, `unnest`) rather
//! than one round trip per serial; per row the effect is that of the per-serial
//! `UPDATE ... WHERE reason IS NULL`.
//!
//! # Revoking in batches
//!
//! A revocation of many certificates (a mass revocation: millions) is cut into batches of
//! [`revoke::DEFAULT_BATCH_SIZE`] certificates (the operator may choose); each batch is one
//! transaction as above, with its own version, and the purges it owes are made as soon as it
//! commits. Two batches are in flight at once, each on a connection of its own. Before the
//! first batch, every serial is checked in one read-only pass (streamed with COPY, one
//! join): an unknown serial, or a reason change that would move a revocation time later,
//! refuses the whole revocation and nothing is written, as for a single transaction. The
//! batches follow the order the rows lie in the table, not the operator's, in tiles sorted
//! by serial (see `revoke::tile`), so that each touches a few thousand pages of a table and
//! index larger than Postgres's cache rather than one page per certificate. A batch the
//! check saw all good is revoked without reading its rows first, where the check found them
//! (their `ctid`): its version is taken before the UPDATE, which changes only rows still
//! there, good and at a lower version (so versions still grow along each row's changes); if
//! any row changed since the check, the batch is rolled back and done the ordinary way. A revocation that
//! stops half way (a failure, an interrupted command) leaves whole batches committed;
//! running it again finishes it, skipping (and reporting) the certificates already revoked.
//!
//! A certificate already revoked is skipped and reported, not an error, and keeps its
//! original reason and time, with one exception (BR 4.9.1.1): a revocation for keyCompromise
//! turns an earlier revocation for another reason into keyCompromise, keeping its revocation
//! time or back-dating it to an explicitly given earlier time ([`revoke::rekey_time`]).
//!
//! An import is one transaction too (rows streamed with COPY, inserted with `ON CONFLICT DO
//! NOTHING`, one audit row); it changes no status, so it takes no version and notifies nobody.
//!
//! Every change is also logged with `tracing` at target `jitocsp::audit`, after commit: one
//! `info` line per transaction (a batch: its size, version, first and last serial) and one
//! `debug` line per certificate. The `audit_log` table has a row per certificate.

mod after_commit;
pub mod import;
mod record;
pub mod revoke;
pub mod unrevoke;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::db::PgError;
use crate::ocsp::RevocationReason;
use crate::purge::cdn::CdnError;
use crate::serial::Serial;

pub use crate::db::issuers::IssuerRow;
pub use after_commit::{AfterCommit, CdnOutcome};

/// How many unknown serials an error message lists by name.
const MAX_NAMED: usize = 10;

/// Where a serial came from, so that a refusal can point at the input line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Argument,
    /// `source` is shared by every line of one input, so a million lines cost one name.
    Line {
        source: Arc<str>,
        line: usize,
    },
    Cert {
        file: String,
        index: usize,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Argument => f.write_str("--serial"),
            Origin::Line { source, line } => write!(f, "{source} line {line}"),
            Origin::Cert { file, index } => write!(f, "{file} certificate {index}"),
        }
    }
}

/// Why a status change was refused or failed. Nothing was changed in either case: every
/// refusal happens before the commit, and a failure before it rolls the transaction back.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{} serial(s) have no certificate of issuer {issuer:?}: {}; nothing was changed \
             (import the certificates first, or fix the input)", .missing.len(), name_some(.missing))]
    UnknownSerials { issuer: String, missing: Vec<(Serial, Origin)> },
    #[error("serial {serial} has no certificate of issuer {issuer:?}")]
    UnknownSerial { issuer: String, serial: Serial },
    #[error("serial {serial} is not revoked; nothing to undo")]
    NotRevoked { serial: Serial },
    #[error("serial {serial} was revoked with reason {}; only a certificateHold can be undone",
            RevocationReason::describe_code(*.code))]
    NotOnHold { serial: Serial, code: i16 },
    #[error("serial {serial} was revoked at {}; --at {} would move it later (a reason change to keyCompromise \
             keeps the revocation time or back-dates it); nothing was changed", rfc3339(*.revoked_at), rfc3339(*.at))]
    LaterRevocationTime { serial: Serial, revoked_at: DateTime<Utc>, at: DateTime<Utc> },
    #[error("serial {serial} appears twice with different notAfter: {first} says {}, {second} says {}",
            .first_not_after.to_rfc3339(), .second_not_after.to_rfc3339())]
    ConflictingNotAfter {
        serial: Serial,
        first: Origin,
        first_not_after: DateTime<Utc>,
        second: Origin,
        second_not_after: DateTime<Utc>,
    },
    #[error("nothing to import: the input holds no certificate")]
    NothingToImport,
    #[error("{given} serials are more than one revocation takes (at most {}); split the input", i32::MAX)]
    TooMany { given: usize },
    /// Cannot happen while the rows are locked; the transaction is rolled back.
    #[error("expected to revoke {expected} certificates but changed {changed}; nothing was changed")]
    RevokedCount { expected: usize, changed: usize },
    /// Cannot happen while the rows are locked; the transaction is rolled back.
    #[error("expected to change {expected} reasons but changed {changed}; nothing was changed")]
    ReasonCount { expected: usize, changed: u64 },
    #[error("{what}")]
    Database {
        what: &'static str,
        #[source]
        source: PgError,
    },
    #[error("recording the CDN purges")]
    CdnPurges(#[source] CdnError),
    /// The audit chain's head row (sql/0006) is missing: the schema is damaged.
    #[error("the audit chain has no head (table audit_log_head is empty); nothing was changed")]
    NoChainHead,
    /// A batch of a revocation failed; the batches before it are committed.
    #[error(
        "stopped after {done} of {total} certificates (their batches are committed); running the same \
             command again finishes the rest, skipping the certificates already revoked"
    )]
    Stopped {
        done: usize,
        total: usize,
        #[source]
        source: Box<StatusError>,
    },
}

impl StatusError {
    /// True when the input is wrong (the operator must change it) and nothing was changed;
    /// false when something failed that may work on another try, or after some batches were
    /// committed (a caller reading "bad input" as "nothing happened" would be wrong then).
    pub fn is_input(&self) -> bool {
        match self {
            StatusError::UnknownSerials { .. }
            | StatusError::UnknownSerial { .. }
            | StatusError::NotRevoked { .. }
            | StatusError::NotOnHold { .. }
            | StatusError::LaterRevocationTime { .. }
            | StatusError::ConflictingNotAfter { .. }
            | StatusError::NothingToImport
            | StatusError::TooMany { .. } => true,
            StatusError::RevokedCount { .. }
            | StatusError::ReasonCount { .. }
            | StatusError::Database { .. }
            | StatusError::CdnPurges(_)
            | StatusError::NoChainHead
            | StatusError::Stopped { .. } => false,
        }
    }
}

/// Told how long work advances (rows streamed, certificates revoked), so that a caller can
/// show it; the library itself never prints.
pub trait Progress {
    /// A stage of `total` units begins: "checking", "revoking", "streaming"...
    fn stage(&mut self, name: &'static str, total: u64);
    /// `done` units of the current stage are done, counted from its start.
    fn advance(&mut self, done: u64);
}

/// Progress nobody watches.
pub struct Unwatched;

impl Progress for Unwatched {
    fn stage(&mut self, _name: &'static str, _total: u64) {}
    fn advance(&mut self, _done: u64) {}
}

/// Maps a Postgres error to [`StatusError::Database`], saying what was being done.
fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StatusError {
    move |e| StatusError::Database { what, source: e.into() }
}

/// The first [`MAX_NAMED`] serials with their origins, and how many more there are.
fn name_some(missing: &[(Serial, Origin)]) -> String {
    let mut named = missing.iter().take(MAX_NAMED).map(|(s, o)| format!("{s} ({o})")).collect::<Vec<_>>().join(", ");
    if missing.len() > MAX_NAMED {
        named.push_str(&format!(" and {} more", missing.len() - MAX_NAMED));
    }
    named
}

/// Times as the audit log and the messages write them.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_serials_are_named_up_to_ten() {
        let missing: Vec<(Serial, Origin)> = (1..=12u8)
            .map(|i| (Serial::from_signed_be(&[i]).unwrap(), Origin::Line { source: Arc::from("f"), line: i as usize }))
            .collect();
        let e = StatusError::UnknownSerials { issuer: "ca".into(), missing };
        let text = e.to_string();
        assert!(text.starts_with("12 serial(s) have no certificate of issuer \"ca\": 01 (f line 1), "), "{text}");
        assert!(text.contains("0a (f line 10) and 2 more; nothing was changed"), "{text}");
        assert!(!text.contains("0b"), "{text}");
        assert!(e.is_input());
    }

    #[test]
    fn a_refusal_after_committed_batches_is_not_reported_as_bad_input() {
        let serial = Serial::from_signed_be(&[7]).unwrap();
        let refused = StatusError::LaterRevocationTime { serial, revoked_at: Utc::now(), at: Utc::now() };
        assert!(refused.is_input(), "alone, before any batch: bad input, nothing changed");
        let stopped = StatusError::Stopped { done: 20_000, total: 40_000, source: Box::new(refused) };
        assert!(!stopped.is_input(), "after a committed batch the database has changed: not exit status 2");
    }
}
