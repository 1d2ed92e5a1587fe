//! `audit_log`: one row per change an operator made, naming who made it.

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use tokio_postgres::{Client, Transaction};

/// Writes one row per certificate changed by `action`: `serials`, `before` and `after` are
/// parallel (the JSON as text), and the rows are written in their order.
pub async fn insert_changes(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    issuer_id: i32,
    serials: &[&[u8]],
    before: &[String],
    after: &[String],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO audit_log (actor, action, issuer_id, serial, before, after) \
         SELECT $1, $2, $3, u.serial, u.before::jsonb, u.after::jsonb \
         FROM unnest($4::bytea[], $5::text[], $6::text[]) WITH ORDINALITY AS u(serial, before, after, n) \
         ORDER BY u.n",
        &[&actor, &action, &issuer_id, &serials, &before, &after],
    )
    .await?;
    Ok(())
}

/// Writes one row per certificate of `serials` changed by `action`, all with the same
/// `before` and `after` (JSON), in their order.
pub async fn insert_same_change(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    issuer_id: i32,
    serials: &[&[u8]],
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO audit_log (actor, action, issuer_id, serial, before, after) \
         SELECT $1, $2, $3, u.serial, $5::text::jsonb, $6::text::jsonb \
         FROM unnest($4::bytea[]) WITH ORDINALITY AS u(serial, n) ORDER BY u.n",
        &[&actor, &action, &issuer_id, &serials, &before.to_string(), &after.to_string()],
    )
    .await?;
    Ok(())
}

/// Writes one row about an issuer as a whole (`issuer add`, `import`); `after` is JSON.
pub async fn insert_issuer_event(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    issuer_id: i32,
    after: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    insert_issuer_change(tx, actor, action, issuer_id, None, after).await
}

/// Writes one row about a change to an issuer (`issuer set-signer`, `issuer retire`): what
/// it was and what it became, as JSON.
pub async fn insert_issuer_change(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    issuer_id: i32,
    before: Option<&serde_json::Value>,
    after: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO audit_log (actor, action, issuer_id, before, after) \
         VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb)",
        &[&actor, &action, &issuer_id, &before.map(|b| b.to_string()), &after.to_string()],
    )
    .await?;
    Ok(())
}

/// One audit row as `admin audit` shows it.
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub issuer: Option<String>,
    pub serial: Option<Vec<u8>>,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The newest `limit` rows, newest first.
pub async fn newest(client: &Client, limit: i64) -> Result<Vec<AuditEntry>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.id, a.at, a.actor, a.action, i.name, a.serial, a.before::text, a.after::text \
             FROM audit_log a LEFT JOIN issuers i ON i.id = a.issuer_id \
             ORDER BY a.id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            issuer: r.get(4),
            serial: r.get(5),
            before: r.get(6),
            after: r.get(7),
        })
        .collect())
}

/// The raw columns a row's hash covers (see [`crate::audit`]), as read for verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainedRow {
    pub id: i64,
    pub chain_seq: i64,
    /// Microseconds since the Unix epoch.
    pub at_micros: i64,
    pub actor: String,
    pub db_role: String,
    pub action: String,
    pub issuer_id: Option<i32>,
    pub serial: Option<Vec<u8>>,
    /// jsonb in Postgres's canonical text form.
    pub before: Option<String>,
    pub after: Option<String>,
    pub prev_hash: Vec<u8>,
    pub row_hash: Vec<u8>,
}

/// Every row in chain order, streamed.
pub async fn in_chain_order(
    client: &Client,
) -> Result<impl Stream<Item = Result<ChainedRow, tokio_postgres::Error>>, tokio_postgres::Error> {
    let rows = client
        .query_raw(
            "SELECT id, chain_seq, (extract(epoch FROM at) * 1000000)::bigint, actor, db_role, action, \
             issuer_id, serial, before::text, after::text, prev_hash, row_hash \
             FROM audit_log ORDER BY chain_seq",
            std::iter::empty::<i32>(),
        )
        .await?;
    Ok(rows.map_ok(|row| ChainedRow {
        id: row.get(0),
        chain_seq: row.get(1),
        at_micros: row.get(2),
        actor: row.get(3),
        db_role: row.get(4),
        action: row.get(5),
        issuer_id: row.get(6),
        serial: row.get(7),
        before: row.get(8),
        after: row.get(9),
        prev_hash: row.get(10),
        row_hash: row.get(11),
    }))
}
