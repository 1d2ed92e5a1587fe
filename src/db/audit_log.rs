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

/// 'jitaudit' in ASCII: the lock that serializes appends to the chain (sql/0004, 0006).
const CHAIN_LOCK: i64 = 7667787802505144692;

/// Where a writer that chains its rows itself (sql/0007) appends: the head, read under the
/// chain's lock (held until `tx` ends), the role the rows must name, and `before` and
/// `after` as the rows will store them (jsonb's text, which their hashes cover).
pub struct ChainHead {
    pub seq: i64,
    pub hash: [u8; 32],
    pub db_role: String,
    pub before: String,
    pub after: String,
}

/// Takes the chain's lock and reads its head (see [`ChainHead`]).
pub async fn lock_head(
    tx: &Transaction<'_>,
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> Result<Option<ChainHead>, tokio_postgres::Error> {
    // Its own statement: a statement that waited for the lock would still read the head as
    // it was when it started.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK]).await?;
    let row = tx
        .query_opt(
            "SELECT h.chain_seq, h.row_hash, session_user::text, $1::text::jsonb::text, $2::text::jsonb::text \
             FROM audit_log_head h",
            &[&before.to_string(), &after.to_string()],
        )
        .await?;
    Ok(row.and_then(|r| {
        Some(ChainHead {
            seq: r.get(0),
            hash: r.get::<_, &[u8]>(1).try_into().ok()?,
            db_role: r.get(2),
            before: r.get(3),
            after: r.get(4),
        })
    }))
}

/// Writes one row per serial of `serials` (their order is the chain's), all alike but for
/// the serial, with the chain columns the writer computed (`links`, parallel to `serials`),
/// at `at` (the transaction's time). The database checks every row before it keeps any.
#[allow(clippy::too_many_arguments)]
pub async fn insert_chained_same_change(
    tx: &Transaction<'_>,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    issuer_id: i32,
    head: &ChainHead,
    serials: &[&[u8]],
    links: &[crate::audit::Link],
) -> Result<(), tokio_postgres::Error> {
    let seqs: Vec<i64> = links.iter().map(|l| l.chain_seq).collect();
    let prev: Vec<&[u8]> = links.iter().map(|l| l.prev_hash.as_slice()).collect();
    let hashes: Vec<&[u8]> = links.iter().map(|l| l.row_hash.as_slice()).collect();
    tx.execute(
        "INSERT INTO audit_log (at, actor, db_role, action, issuer_id, serial, before, after, \
                                chain_seq, prev_hash, row_hash) \
         SELECT $1, $2, $3, $4, $5, u.serial, $6::text::jsonb, $7::text::jsonb, u.seq, u.prev, u.hash \
         FROM unnest($8::bytea[], $9::int8[], $10::bytea[], $11::bytea[]) WITH ORDINALITY AS u(serial, seq, prev, hash, n) \
         ORDER BY u.n",
        &[&at, &actor, &head.db_role, &action, &issuer_id, &head.before, &head.after, &serials, &seqs, &prev, &hashes],
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
