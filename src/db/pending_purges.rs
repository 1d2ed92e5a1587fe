//! `pending_purges`: the Redis purges a status change owes, one row per certificate, keyed
//! by (issuer_id, serial) and stamped with `since` (the owing transaction's `now()`).
//!
//! The settle rule (a row goes only if its `since` is the one the purge was made for) is
//! told in [`crate::purge::pending`].

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient, Transaction};

/// Records (or re-arms, resetting its attempts) the purge owed for each of `serials`.
pub async fn arm(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serials: &[&[u8]],
    since: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO pending_purges (issuer_id, serial, since) \
         SELECT $1, s, $3 FROM unnest($2::bytea[]) AS s \
         ON CONFLICT (issuer_id, serial) DO UPDATE \
         SET since = EXCLUDED.since, attempts = 0, last_error = NULL",
        &[&issuer_id, &serials, &since],
    )
    .await?;
    Ok(())
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

/// The purge owed for one certificate, if any.
pub async fn for_certificate(
    client: &Client,
    issuer_id: i32,
    serial: &[u8],
) -> Result<Option<PendingState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT since, attempts, last_error FROM pending_purges WHERE issuer_id = $1 AND serial = $2",
            &[&issuer_id, &serial],
        )
        .await?;
    Ok(row.map(|r| PendingState { since: r.get(0), attempts: r.get(1), last_error: r.get(2) }))
}
