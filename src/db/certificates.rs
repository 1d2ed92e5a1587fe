//! `certificates`: one row per issued certificate, its status, and the version of its last
//! status change (`changed_version`, from `status_change_seq`).
//!
//! The write statements assume the caller's transaction locked the rows first
//! ([`statuses`] with `lock`); the rules are in [`crate::status`].

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, GenericClient, Transaction};

/// The responders' status read, by primary key. Several keys are read with one `= ANY` query
/// over parallel arrays, which Postgres answers with index lookups. A standby also says how
/// far it has replayed (NULL on a primary, including a promoted standby).
/// Parameters: `$1 int[]` issuer ids, `$2 bytea[]` serials; `k.i` is the key's 1-based index.
pub const STATUS_LOOKUP: &str = "\
    SELECT k.i, c.not_after, c.reason, c.revoked_at, coalesce(c.changed_version, 0), \
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END \
    FROM unnest($1::int[], $2::bytea[]) WITH ORDINALITY AS k(issuer_id, serial, i) \
    LEFT JOIN certificates c ON c.issuer_id = k.issuer_id AND c.serial = k.serial";

/// The listener's catch-up read: every change since `$1` (timestamptz), as
/// (issuer_id, serial, revoked, version).
pub const CHANGES_SINCE: &str = "\
    SELECT issuer_id, serial, reason IS NOT NULL, coalesce(changed_version, 0) FROM certificates \
    WHERE changed_at IS NOT NULL AND changed_at > $1";

/// A certificate's revocation state: both set (revoked) or both NULL (good).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRow {
    pub reason: Option<i16>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Reads the status of `serials` of one issuer, keyed by serial bytes; with `lock`, locks the
/// rows (`FOR UPDATE`) for the caller's transaction. Serials without a row are absent.
pub async fn statuses(
    client: &impl GenericClient,
    issuer_id: i32,
    serials: &[&[u8]],
    lock: bool,
) -> Result<HashMap<Vec<u8>, StatusRow>, tokio_postgres::Error> {
    const READ: &str = "SELECT serial, reason, revoked_at FROM certificates WHERE issuer_id = $1 AND serial = ANY($2)";
    const LOCK: &str =
        "SELECT serial, reason, revoked_at FROM certificates WHERE issuer_id = $1 AND serial = ANY($2) FOR UPDATE";
    let rows = client.query(if lock { LOCK } else { READ }, &[&issuer_id, &serials]).await?;
    Ok(rows.iter().map(|r| (r.get::<_, Vec<u8>>(0), StatusRow { reason: r.get(1), revoked_at: r.get(2) })).collect())
}

/// Takes the version of a transaction's status changes. Call after locking the rows, so that
/// versions grow along each row's changes.
pub async fn next_version(tx: &Transaction<'_>) -> Result<i64, tokio_postgres::Error> {
    Ok(tx.query_one("SELECT nextval('status_change_seq')", &[]).await?.get(0))
}

/// The revocation UPDATE, with `$extra` added to its WHERE clause.
macro_rules! revoke_sql {
    ($extra:literal) => {
        concat!(
            "UPDATE certificates SET reason = $3, revoked_at = $4, changed_at = clock_timestamp(), \
             changed_version = $5 \
             WHERE issuer_id = $1 AND serial = ANY($2) AND reason IS NULL AND coalesce(changed_version, 0) < $5",
            $extra
        )
    };
}

/// Revokes the good certificates among `serials` whose last change is below `version`
/// (so a row's versions only grow, whether or not the caller locked it before taking
/// `version`); returns how many it changed.
///
/// With `tids`, where the caller found the rows ([`check_streamed`]), they are read there
/// instead of through the primary key, a lookup saved per row; a row that moved since (it
/// changed, so it is no longer good at a lower version) is not changed, and the count tells.
#[allow(clippy::too_many_arguments)]
pub async fn revoke(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serials: &[&[u8]],
    tids: Option<&[Tid]>,
    reason_code: i16,
    at: DateTime<Utc>,
    version: i64,
) -> Result<u64, tokio_postgres::Error> {
    match tids {
        None => tx.execute(revoke_sql!(""), &[&issuer_id, &serials, &reason_code, &at, &version]).await,
        Some(tids) => {
            tx.execute(revoke_sql!(" AND ctid = ANY($6)"), &[&issuer_id, &serials, &reason_code, &at, &version, &tids])
                .await
        }
    }
}

/// Where a row version lies in the table (its `ctid`): block number and line pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tid {
    pub block: u32,
    pub line: u16,
}

/// A `tid` in binary: the block number (4 octets) and the line pointer (2), big-endian.
impl<'a> FromSql<'a> for Tid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw {
            [b0, b1, b2, b3, l0, l1] => {
                Ok(Tid { block: u32::from_be_bytes([*b0, *b1, *b2, *b3]), line: u16::from_be_bytes([*l0, *l1]) })
            }
            _ => Err(format!("a tid is 6 octets, not {}", raw.len()).into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }
}

impl ToSql for Tid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u32(self.block);
        out.put_u16(self.line);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }

    to_sql_checked!();
}

/// The temporary table a revocation's check streams its serials into (dropped at commit):
/// `i` is the serial's 0-based position in the operator's input.
pub const REVOKE_CHECK_TABLE: &str =
    "CREATE TEMPORARY TABLE jitocsp_revoke_check (i int4 NOT NULL, serial bytea NOT NULL) ON COMMIT DROP";

/// Streams rows (i int4, serial bytea, binary format) into [`REVOKE_CHECK_TABLE`].
pub const REVOKE_CHECK_COPY: &str = "COPY jitocsp_revoke_check (i, serial) FROM STDIN (FORMAT binary)";

/// A certificate as a revocation's check found it: its state, and where its row lies.
#[derive(Clone, Debug)]
pub struct Found {
    pub state: StatusRow,
    pub tid: Tid,
}

/// The state of each serial streamed into [`REVOKE_CHECK_TABLE`], as a certificate of
/// `issuer_id`: by position, `None` if it has no row. In the order the rows lie in the table
/// (serials without a row last), so that a caller can work through them page by page.
///
/// One join rather than a lookup per serial: for millions of serials Postgres reads the
/// table once (a hash join) instead of jumping around a table larger than its cache. The
/// hash table is kept in memory (`work_mem` for this transaction, about 100 bytes a serial:
/// spilled to disk in batches, the join took several times as long), and the rows are put in
/// table order here rather than by an ORDER BY, which would sort millions of rows on disk.
pub async fn check_streamed(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serials: usize,
) -> Result<Vec<(usize, Option<Found>)>, tokio_postgres::Error> {
    let work_mem_kb = (serials / 10).clamp(4 * 1024, 1024 * 1024);
    // One query over millions of rows: compiling it (JIT, a second or more) does not pay.
    tx.batch_execute(&format!("SET LOCAL work_mem = '{work_mem_kb}kB'; SET LOCAL jit = off")).await?;
    // A temporary table has no statistics until analysed; without them the planner guesses.
    tx.batch_execute("ANALYZE jitocsp_revoke_check").await?;
    let rows = tx
        .query_raw(
            "SELECT t.i, c.ctid, c.reason, c.revoked_at \
             FROM jitocsp_revoke_check t \
             LEFT JOIN certificates c ON c.issuer_id = $1 AND c.serial = t.serial",
            [&issuer_id],
        )
        .await?;
    pin_mut!(rows);
    let mut found = Vec::with_capacity(serials);
    while let Some(row) = rows.try_next().await? {
        let Ok(index) = usize::try_from(row.get::<_, i32>(0)) else { continue };
        let state = row
            .get::<_, Option<Tid>>(1)
            .map(|tid| Found { state: StatusRow { reason: row.get(2), revoked_at: row.get(3) }, tid });
        found.push((index, state));
    }
    found.sort_unstable_by_key(|(i, f)| (f.as_ref().map_or(Tid { block: u32::MAX, line: u16::MAX }, |f| f.tid), *i));
    Ok(found)
}

/// Sets the reason of revoked certificates to `reason_code`, each with its own revocation
/// time (`serials` and `times` are parallel); returns how many rows changed.
pub async fn set_reasons(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serials: &[&[u8]],
    times: &[DateTime<Utc>],
    reason_code: i16,
    version: i64,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "UPDATE certificates c SET reason = $3, revoked_at = u.at, changed_at = clock_timestamp(), \
         changed_version = $4 \
         FROM unnest($2::bytea[], $5::timestamptz[]) AS u(serial, at) \
         WHERE c.issuer_id = $1 AND c.serial = u.serial AND c.reason IS NOT NULL",
        &[&issuer_id, &serials, &reason_code, &version, &times],
    )
    .await
}

/// Makes a certificate revoked with `reason_code` good again; returns how many rows changed.
pub async fn unrevoke(
    tx: &Transaction<'_>,
    issuer_id: i32,
    serial: &[u8],
    reason_code: i16,
    version: i64,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "UPDATE certificates SET reason = NULL, revoked_at = NULL, changed_at = clock_timestamp(), \
         changed_version = $4 WHERE issuer_id = $1 AND serial = $2 AND reason = $3",
        &[&issuer_id, &serial, &reason_code, &version],
    )
    .await
}

/// Queues one notification on `channel` per payload; delivered only if `tx` commits.
pub async fn notify(tx: &Transaction<'_>, channel: &str, payloads: &[String]) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", &[&channel, &payloads]).await?;
    Ok(())
}

/// The temporary table an import streams its rows into (dropped at commit).
pub const IMPORT_TABLE: &str =
    "CREATE TEMPORARY TABLE jitocsp_import (serial bytea NOT NULL, not_after timestamptz NOT NULL) \
     ON COMMIT DROP";

/// Streams rows (serial bytea, not_after timestamptz, binary format) into [`IMPORT_TABLE`].
pub const IMPORT_COPY: &str = "COPY jitocsp_import (serial, not_after) FROM STDIN (FORMAT binary)";

/// Inserts the imported rows as good certificates of `issuer_id`; rows already present are
/// left as they are. Returns how many were inserted.
pub async fn insert_imported(tx: &Transaction<'_>, issuer_id: i32) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO certificates (issuer_id, serial, not_after) \
         SELECT $1, serial, not_after FROM jitocsp_import \
         ON CONFLICT (issuer_id, serial) DO NOTHING",
        &[&issuer_id],
    )
    .await
}

/// How many imported rows already exist with another notAfter.
pub async fn count_not_after_mismatches(tx: &Transaction<'_>, issuer_id: i32) -> Result<i64, tokio_postgres::Error> {
    Ok(tx
        .query_one(
            "SELECT count(*) FROM jitocsp_import t JOIN certificates c \
             ON c.issuer_id = $1 AND c.serial = t.serial WHERE c.not_after <> t.not_after",
            &[&issuer_id],
        )
        .await?
        .get(0))
}

/// Refreshes the table's planner statistics.
pub async fn analyze(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("ANALYZE certificates").await
}

/// One certificate as `admin status` shows it.
pub struct CertificateRow {
    pub not_after: DateTime<Utc>,
    pub status: StatusRow,
    pub changed_at: Option<DateTime<Utc>>,
}

/// Reads one certificate, if it has a row.
pub async fn one(
    client: &Client,
    issuer_id: i32,
    serial: &[u8],
) -> Result<Option<CertificateRow>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT not_after, reason, revoked_at, changed_at FROM certificates \
             WHERE issuer_id = $1 AND serial = $2",
            &[&issuer_id, &serial],
        )
        .await?;
    Ok(row.map(|r| CertificateRow {
        not_after: r.get(0),
        status: StatusRow { reason: r.get(1), revoked_at: r.get(2) },
        changed_at: r.get(3),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tid_is_six_big_endian_octets() {
        let tid = Tid { block: 0x0102_0304, line: 0x0506 };
        let mut out = BytesMut::new();
        tid.to_sql(&Type::TID, &mut out).unwrap();
        assert_eq!(&out[..], [1, 2, 3, 4, 5, 6]);
        assert_eq!(Tid::from_sql(&Type::TID, &out).unwrap(), tid);
        assert!(Tid::from_sql(&Type::TID, &out[..5]).is_err());
    }
}
