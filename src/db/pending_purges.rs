//! The Redis purges a status change owes: `pending_purge_batches` (sql/0007), one row per
//! owing transaction holding its serials, and the older `pending_purges`, one row per
//! certificate, keyed by (issuer_id, serial) and stamped with `since` (the owing
//! transaction's `now()`), which this version only works off.
//!
//! The settle rules (a batch row goes once all its serials are purged; a `pending_purges` row
//! only if its `since` is the one the purge was made for) are told in
//! [`crate::purge::pending`].

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient, Transaction};

/// Records the purges a change owes for `serials` (at least one), as one row; returns its id.
pub async fn arm(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serials: &[&[u8]],
    since: DateTime<Utc>,
) -> Result<i64, tokio_postgres::Error> {
    Ok(tx
        .query_one(
            "INSERT INTO pending_purge_batches (issuer_id, serials, since) VALUES ($1, $2, $3) RETURNING id",
            &[&issuer_id, &serials, &since],
        )
        .await?
        .get(0))
}

/// The purges one change owes, as stored (the serials are not yet parsed).
pub struct PendingBatch {
    pub id: i64,
    pub issuer_id: i32,
    pub serials: Vec<Vec<u8>>,
}

/// The owed batches, oldest first; at most `limit` of them, or all.
pub async fn oldest_batches(
    client: &impl GenericClient,
    limit: Option<i64>,
) -> Result<Vec<PendingBatch>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT id, issuer_id, serials FROM pending_purge_batches ORDER BY id LIMIT $1", &[&limit])
        .await?;
    Ok(rows.iter().map(|r| PendingBatch { id: r.get(0), issuer_id: r.get(1), serials: r.get(2) }).collect())
}

/// Deletes the batches `ids`, whose purges are all done.
pub async fn delete_batches(client: &Client, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    client.execute("DELETE FROM pending_purge_batches WHERE id = ANY($1)", &[&ids]).await
}

/// Counts a failed attempt, with its error, on the batches `ids`.
pub async fn record_batch_failure(client: &Client, ids: &[i64], error: &str) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pending_purge_batches SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)",
            &[&ids, &error],
        )
        .await
}

/// A purge still owed, as stored (the serial is not yet parsed).
pub struct PendingRow {
    pub issuer_id: i32,
    pub serial: Vec<u8>,
    pub since: DateTime<Utc>,
}

/// The owed purges, oldest first; at most `limit` of them, or all.
pub async fn oldest(client: &impl GenericClient, limit: Option<i64>) -> Result<Vec<PendingRow>, tokio_postgres::Error> {
    // LIMIT NULL is LIMIT ALL.
    let rows =
        client.query("SELECT issuer_id, serial, since FROM pending_purges ORDER BY since LIMIT $1", &[&limit]).await?;
    Ok(rows.iter().map(|r| PendingRow { issuer_id: r.get(0), serial: r.get(1), since: r.get(2) }).collect())
}

/// Deletes the rows `(issuer_ids[i], serials[i])` whose `since` is still `since[i]`.
pub async fn delete_settled(
    client: &Client,
    issuer_ids: &[i32],
    serials: &[&[u8]],
    since: &[DateTime<Utc>],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM pending_purges p \
             USING unnest($1::int4[], $2::bytea[], $3::timestamptz[]) AS d(issuer_id, serial, since) \
             WHERE p.issuer_id = d.issuer_id AND p.serial = d.serial AND p.since = d.since",
            &[&issuer_ids, &serials, &since],
        )
        .await
}

/// Counts a failed attempt, with its error, on the rows whose `since` is still `since[i]`.
pub async fn record_failure(
    client: &Client,
    issuer_ids: &[i32],
    serials: &[&[u8]],
    since: &[DateTime<Utc>],
    error: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pending_purges p SET attempts = p.attempts + 1, last_error = $4 \
             FROM unnest($1::int4[], $2::bytea[], $3::timestamptz[]) AS d(issuer_id, serial, since) \
             WHERE p.issuer_id = d.issuer_id AND p.serial = d.serial AND p.since = d.since",
            &[&issuer_ids, &serials, &since, &error],
        )
        .await
}

/// One certificate's owed purge, as `admin status` shows it.
pub struct PendingState {
    pub since: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// The purge owed for one certificate, if any (the oldest, if several changes owe one).
pub async fn for_certificate(
    client: &Client,
    issuer_id: i32,
    serial: &[u8],
) -> Result<Option<PendingState>, tokio_postgres::Error> {
    // A scan of the batches: they are few (each goes once purged), and this is for an operator.
    let row = client
        .query_opt(
            "SELECT since, attempts, last_error FROM ( \
                 SELECT since, attempts, last_error FROM pending_purges WHERE issuer_id = $1 AND serial = $2 \
                 UNION ALL \
                 SELECT since, attempts, last_error FROM pending_purge_batches \
                 WHERE issuer_id = $1 AND $2 = ANY(serials)) p \
             ORDER BY since LIMIT 1",
            &[&issuer_id, &serial],
        )
        .await?;
    Ok(row.map(|r| PendingState { since: r.get(0), attempts: r.get(1), last_error: r.get(2) }))
}
