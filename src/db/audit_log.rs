//! `audit_log`: one row per change an operator made, naming who made it.

use chrono::{DateTime, Utc};
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

/// Writes one row about an issuer as a whole (`issuer add`, `import`); `after` is JSON.
pub async fn insert_issuer_event(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    issuer_id: i32,
    after: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO audit_log (actor, action, issuer_id, after) VALUES ($1, $2, $3, $4::text::jsonb)",
        &[&actor, &action, &issuer_id, &after.to_string()],
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
