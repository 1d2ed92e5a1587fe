//! The rows a status change writes beside the status itself, inside its transaction: audit,
//! pending purges, CDN purges, and the notifications.

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use super::{db, IssuerRow, StatusError};
use crate::config::CdnConfig;
use crate::db::{audit_log, certificates, pending_purges};
use crate::feed::payload::{StatusChange, CHANNEL};
use crate::purge::cdn;
use crate::serial::Serial;

/// One certificate about to change, for the audit log and the pending purge.
pub(super) struct Planned<'a> {
    pub serial: &'a Serial,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// Writes the audit rows and the pending purges of `planned`, inside `tx`.
///
/// Runs before the status UPDATE, so that `changed_at` (kept for operators and for the
/// responders' catch-up window) is as close to COMMIT as it can be.
pub(super) async fn record_planned(
    tx: &Transaction<'_>,
    issuer_id: i32,
    action: &str,
    who: &str,
    txn_now: DateTime<Utc>,
    planned: &[Planned<'_>],
) -> Result<(), StatusError> {
    let serials: Vec<&[u8]> = planned.iter().map(|c| c.serial.as_bytes()).collect();
    let before: Vec<String> = planned.iter().map(|c| c.before.to_string()).collect();
    let after: Vec<String> = planned.iter().map(|c| c.after.to_string()).collect();
    audit_log::insert_changes(tx, who, action, issuer_id, &serials, &before, &after)
        .await
        .map_err(db("writing the audit log"))?;
    pending_purges::arm(tx, issuer_id, &serials, txn_now).await.map_err(db("recording the pending cache purges"))?;
    Ok(())
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

/// Queues one `jitocsp_status` notification per change; delivered only if `tx` commits.
pub(super) async fn notify(tx: &Transaction<'_>, changes: &[StatusChange]) -> Result<(), StatusError> {
    let payloads: Vec<String> = changes.iter().map(StatusChange::to_payload).collect();
    certificates::notify(tx, CHANNEL, &payloads).await.map_err(db("queueing the status notifications"))
}

/// The transaction's start time: what `pending_purges.since` gets.
pub(super) async fn transaction_now(tx: &Transaction<'_>) -> Result<DateTime<Utc>, StatusError> {
    crate::db::transaction_now(tx).await.map_err(db("reading the database clock"))
}

/// Takes the version of this transaction's status changes. Call after locking the rows.
pub(super) async fn next_version(tx: &Transaction<'_>) -> Result<i64, StatusError> {
    certificates::next_version(tx).await.map_err(db("taking a status version"))
}
