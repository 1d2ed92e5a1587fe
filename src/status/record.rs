//! The rows a status change writes beside the status itself, inside its transaction: audit,
//! pending purges, CDN purges, and the notifications.

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use super::{db, IssuerRow, StatusError};
use crate::audit::{extend_same, SameChange};
use crate::config::CdnConfig;
use crate::db::{audit_log, certificates, pending_purges};
use crate::feed::payload::{StatusChanges, CHANNEL};
use crate::purge::cdn;
use crate::serial::Serial;

/// One certificate about to change, for the audit log.
pub(super) struct Planned<'a> {
    pub serial: &'a Serial,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// Writes the audit rows of `planned`, each with its own before and after, inside `tx`.
pub(super) async fn audit(
    tx: &Transaction<'_>,
    issuer_id: i32,
    action: &str,
    who: &str,
    planned: &[Planned<'_>],
) -> Result<(), StatusError> {
    let serials: Vec<&[u8]> = planned.iter().map(|c| c.serial.as_bytes()).collect();
    let before: Vec<String> = planned.iter().map(|c| c.before.to_string()).collect();
    let after: Vec<String> = planned.iter().map(|c| c.after.to_string()).collect();
    audit_log::insert_changes(tx, who, action, issuer_id, &serials, &before, &after)
        .await
        .map_err(db("writing the audit log"))
}

/// Writes the audit rows of `serials`, which all changed from `before` to `after`, inside
/// `tx`, at `at` (the transaction's time): the rows are chained here rather than by the
/// per-row trigger, and the database checks them all in one pass (sql/0007), which keeps
/// the time the chain stays locked short.
#[allow(clippy::too_many_arguments)]
pub(super) async fn audit_same(
    tx: &Transaction<'_>,
    issuer_id: i32,
    action: &str,
    who: &str,
    serials: &[&Serial],
    before: &serde_json::Value,
    after: &serde_json::Value,
    at: DateTime<Utc>,
) -> Result<(), StatusError> {
    let serials: Vec<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
    let head = audit_log::lock_head(tx, before, after).await.map_err(db("reading the audit chain's head"))?;
    let head = head.ok_or(StatusError::NoChainHead)?;
    let change = SameChange {
        at_micros: at.timestamp_micros(),
        actor: who,
        db_role: &head.db_role,
        action,
        issuer_id,
        before: &head.before,
        after: &head.after,
    };
    let links = extend_same(head.seq, head.hash, &change, &serials);
    audit_log::insert_chained_same_change(tx, at, who, action, issuer_id, &head, &serials, &links)
        .await
        .map_err(db("writing the audit log"))
}

/// Records the Redis purges `serials` now owe, inside `tx`, as one row; returns its id.
pub(super) async fn arm_purges(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serials: &[&Serial],
    txn_now: DateTime<Utc>,
) -> Result<i64, StatusError> {
    let serials: Vec<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
    pending_purges::arm(tx, issuer_id, &serials, txn_now).await.map_err(db("recording the pending cache purges"))
}

/// With a CDN purge hook configured, records one `cdn_purges` row per changed certificate
/// inside `tx` (see `crate::purge::cdn`). Returns the rows' ids.
pub(super) async fn record_cdn_purges(
    tx: &Transaction<'_>,
    cdn: &CdnConfig,
    issuer: &IssuerRow,
    action: &str,
    serials: &[&Serial],
) -> Result<Vec<i64>, StatusError> {
    if !cdn.enabled() {
        return Ok(Vec::new());
    }
    cdn::enqueue(tx, cdn, issuer.id, &issuer.name, &issuer.cert_der, action, serials)
        .await
        .map_err(StatusError::CdnPurges)
}

/// Queues the `jitocsp_status` notifications telling that `serials` became revoked (or good)
/// at `version`, a couple of hundred per notification; delivered only if `tx` commits.
pub(super) async fn notify(
    tx: &Transaction<'_>,
    issuer_id: i32,
    revoked: bool,
    version: i64,
    serials: &[&Serial],
) -> Result<(), StatusError> {
    let payloads = StatusChanges::payloads(issuer_id, revoked, version, serials);
    certificates::notify(tx, CHANNEL, &payloads).await.map_err(db("queueing the status notifications"))
}

/// The transaction's start time: what `pending_purge_batches.since` gets, and the time of
/// the audit rows the writer chains itself.
pub(super) async fn transaction_now(tx: &Transaction<'_>) -> Result<DateTime<Utc>, StatusError> {
    crate::db::transaction_now(tx).await.map_err(db("reading the database clock"))
}

/// Takes the version of this transaction's status changes. Call after locking the rows.
pub(super) async fn next_version(tx: &Transaction<'_>) -> Result<i64, StatusError> {
    certificates::next_version(tx).await.map_err(db("taking a status version"))
}
