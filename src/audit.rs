//! The audit trail's hash chain, and its verification (`jitocsp admin audit --verify`).
//!
//! Postgres writes the chain (sql/0004_audit_chain.sql, made cheaper per row by
//! sql/0006_audit_chain_head.sql: a trigger fills `chain_seq`,
//! `prev_hash`, `row_hash`, `db_role` and `at` on every insert, and refuses UPDATE, DELETE and
//! TRUNCATE). This module checks it **without trusting the database's functions**: it reads
//! the raw columns in chain order, rebuilds each row's content by its own code, and
//! recomputes every hash. A row that was changed, deleted or moved, or a trigger function
//! that was swapped for a laxer one, shows up as the first row whose hash or link is wrong.
//!
//! What a chain cannot show by itself is rows cut off its end; [`Verified`] therefore
//! reports the head (last sequence number and hash) for the auditor to record and compare
//! with the next verification.

use futures_util::{pin_mut, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::db::audit_log;
pub use crate::db::audit_log::ChainedRow;

/// The `prev_hash` of the first row.
pub const GENESIS: [u8; 32] = [0; 32];

impl ChainedRow {
    /// The bytes the row's hash covers: every field length-prefixed (`<bytes>:<value>;`,
    /// NULL as `-;`), so that no two different rows share a content.
    pub fn content(&self) -> Vec<u8> {
        let mut out = CONTENT_TAG.to_vec();
        field(&mut out, Some(&self.chain_seq.to_string()));
        field(&mut out, Some(&self.at_micros.to_string()));
        field(&mut out, Some(&self.actor));
        field(&mut out, Some(&self.db_role));
        field(&mut out, Some(&self.action));
        field(&mut out, self.issuer_id.map(|i| i.to_string()).as_deref());
        field(&mut out, self.serial.as_ref().map(hex::encode).as_deref());
        field(&mut out, self.before.as_deref());
        field(&mut out, self.after.as_deref());
        out
    }

    /// `sha256(prev_hash || content)`, with the given previous hash.
    pub fn hash_after(&self, prev_hash: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        hasher.update(self.content());
        hasher.finalize().into()
    }
}

/// What every content starts with.
const CONTENT_TAG: &[u8] = b"jitocsp-audit-v1;";

/// One field of a content: `<bytes>:<value>;`, or `-;` for NULL.
fn field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.extend_from_slice(b"-;"),
        Some(v) => {
            out.extend_from_slice(format!("{}:", v.len()).as_bytes());
            out.extend_from_slice(v.as_bytes());
            out.push(b';');
        }
    }
}

/// Audit rows alike but for their serial (a bulk revocation's), as the database will store
/// them: `db_role` is the session's role, `before` and `after` jsonb's text of the JSON.
#[derive(Clone, Debug)]
pub struct SameChange<'a> {
    pub at_micros: i64,
    pub actor: &'a str,
    pub db_role: &'a str,
    pub action: &'a str,
    pub issuer_id: i32,
    pub before: &'a str,
    pub after: &'a str,
}

/// The chain columns of one appended row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub chain_seq: i64,
    pub prev_hash: [u8; 32],
    pub row_hash: [u8; 32],
}

/// Appends one row of `change` per serial to the chain whose head is (`head_seq`,
/// `head_hash`), in order: the chain columns a writer fills in itself (sql/0007), the same
/// as the per-row trigger would have, and as [`ChainedRow::hash_after`] recomputes them.
pub fn extend_same(head_seq: i64, head_hash: [u8; 32], change: &SameChange<'_>, serials: &[&[u8]]) -> Vec<Link> {
    // The fields between the position and the serial, and after the serial, are the same
    // for every row: encoded once.
    let mut middle = Vec::new();
    field(&mut middle, Some(&change.at_micros.to_string()));
    field(&mut middle, Some(change.actor));
    field(&mut middle, Some(change.db_role));
    field(&mut middle, Some(change.action));
    field(&mut middle, Some(&change.issuer_id.to_string()));
    let mut tail = Vec::new();
    field(&mut tail, Some(change.before));
    field(&mut tail, Some(change.after));
    let mut links = Vec::with_capacity(serials.len());
    let mut prev = head_hash;
    let mut content = Vec::new();
    for (chain_seq, serial) in (head_seq + 1..).zip(serials) {
        content.clear();
        content.extend_from_slice(CONTENT_TAG);
        field(&mut content, Some(&chain_seq.to_string()));
        content.extend_from_slice(&middle);
        field(&mut content, Some(&hex::encode(serial)));
        content.extend_from_slice(&tail);
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(&content);
        let row_hash: [u8; 32] = hasher.finalize().into();
        links.push(Link { chain_seq, prev_hash: prev, row_hash });
        prev = row_hash;
    }
    links
}

/// The first thing wrong in the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("row id {id} has chain position {found}, expected {expected}: rows before it were deleted or reordered")]
    Gap { id: i64, expected: i64, found: i64 },
    #[error("row id {id} (chain position {seq}) does not link to the row before it: that row was changed, deleted or reordered")]
    Link { id: i64, seq: i64 },
    #[error("row id {id} (chain position {seq}) does not match its hash: the row was changed")]
    Content { id: i64, seq: i64 },
}

/// A chain that verified: how many rows, and its head for the auditor's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub rows: u64,
    pub head_seq: i64,
    pub head_hash: [u8; 32],
}

/// Walks rows in chain order, checking each against the one before. Feed it every row from
/// chain position 1 on; [`Walk::finish`] gives the head.
#[derive(Debug)]
pub struct Walk {
    rows: u64,
    next_seq: i64,
    prev_hash: [u8; 32],
}

impl Default for Walk {
    fn default() -> Self {
        Walk { rows: 0, next_seq: 1, prev_hash: GENESIS }
    }
}

impl Walk {
    pub fn check(&mut self, row: &ChainedRow) -> Result<(), ChainBreak> {
        if row.chain_seq != self.next_seq {
            return Err(ChainBreak::Gap { id: row.id, expected: self.next_seq, found: row.chain_seq });
        }
        if row.prev_hash != self.prev_hash {
            return Err(ChainBreak::Link { id: row.id, seq: row.chain_seq });
        }
        let hash = row.hash_after(&self.prev_hash);
        if row.row_hash != hash {
            return Err(ChainBreak::Content { id: row.id, seq: row.chain_seq });
        }
        self.rows += 1;
        self.next_seq += 1;
        self.prev_hash = hash;
        Ok(())
    }

    pub fn finish(self) -> Verified {
        Verified { rows: self.rows, head_seq: self.next_seq - 1, head_hash: self.prev_hash }
    }
}

/// Why the audit log could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading the audit log")]
    Read(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Broken(#[from] ChainBreak),
}

/// Reads the whole audit log in chain order (streamed, not loaded at once) and verifies it.
pub async fn verify(client: &Client) -> Result<Verified, VerifyError> {
    let rows = audit_log::in_chain_order(client).await.map_err(VerifyError::Read)?;
    pin_mut!(rows);
    let mut walk = Walk::default();
    while let Some(row) = rows.try_next().await.map_err(VerifyError::Read)? {
        walk.check(&row)?;
    }
    Ok(walk.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, actor: &str) -> ChainedRow {
        ChainedRow {
            id: seq * 10,
            chain_seq: seq,
            at_micros: 1_700_000_000_000_000 + seq,
            actor: actor.to_owned(),
            db_role: "jitocsp_admin".into(),
            action: "revoke".into(),
            issuer_id: Some(1),
            serial: Some(vec![0x0a, 0xbc]),
            before: Some(r#"{"status": "good"}"#.into()),
            after: None,
            prev_hash: Vec::new(),
            row_hash: Vec::new(),
        }
    }

    fn chain(actors: &[&str]) -> Vec<ChainedRow> {
        let mut prev = GENESIS;
        let mut rows = Vec::new();
        for (i, actor) in actors.iter().enumerate() {
            let mut r = row(i as i64 + 1, actor);
            r.prev_hash = prev.to_vec();
            prev = r.hash_after(&prev);
            r.row_hash = prev.to_vec();
            rows.push(r);
        }
        rows
    }

    fn walk(rows: &[ChainedRow]) -> Result<Verified, ChainBreak> {
        let mut walk = Walk::default();
        rows.iter().try_for_each(|r| walk.check(r))?;
        Ok(walk.finish())
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let rows = chain(&["alice", "bob", "carol"]);
        let verified = walk(&rows).unwrap();
        assert_eq!((verified.rows, verified.head_seq), (3, 3));
        assert_eq!(verified.head_hash.to_vec(), rows[2].row_hash);
    }

    #[test]
    fn a_changed_row_is_named() {
        let mut rows = chain(&["alice", "bob", "carol"]);
        rows[1].actor = "mallory".into();
        assert_eq!(walk(&rows), Err(ChainBreak::Content { id: 20, seq: 2 }));
    }

    #[test]
    fn a_deleted_row_is_a_gap() {
        let mut rows = chain(&["alice", "bob", "carol"]);
        rows.remove(1);
        assert_eq!(walk(&rows), Err(ChainBreak::Gap { id: 30, expected: 2, found: 3 }));
        let mut rows = chain(&["alice", "bob"]);
        rows.remove(0);
        assert_eq!(walk(&rows), Err(ChainBreak::Gap { id: 20, expected: 1, found: 2 }));
    }

    #[test]
    fn reordered_rows_break_the_links_even_when_renumbered() {
        let mut rows = chain(&["alice", "bob", "carol"]);
        rows.swap(1, 2);
        rows[1].chain_seq = 2;
        rows[2].chain_seq = 3;
        assert_eq!(walk(&rows), Err(ChainBreak::Link { id: 30, seq: 2 }));
    }

    #[test]
    fn fields_are_delimited_unambiguously() {
        let mut a = row(1, "a;b");
        a.db_role = "c".into();
        let mut b = row(1, "a");
        b.db_role = "b;c".into();
        assert_ne!(a.content(), b.content());
        let mut null = row(1, "x");
        null.after = None;
        let mut dash = row(1, "x");
        dash.after = Some("-".into());
        assert_ne!(null.content(), dash.content());
    }

    /// The rows a writer chains itself (a bulk revocation's) are the rows the verifier
    /// accepts, linked to the head they were appended to.
    #[test]
    fn rows_chained_by_the_writer_verify() {
        let head = chain(&["alice", "bob"]);
        let head_hash: [u8; 32] = head[1].row_hash.clone().try_into().unwrap();
        let change = SameChange {
            at_micros: 1_700_000_000_123_456,
            actor: "carol ✓",
            db_role: "jitocsp_admin",
            action: "revoke",
            issuer_id: 7,
            before: r#"{"status": "good"}"#,
            after: r#"{"reason": "keyCompromise", "status": "revoked"}"#,
        };
        let serials: [&[u8]; 3] = [&[0x0a, 0x01], &[0x7f; 20], &[0x01]];
        let links = extend_same(2, head_hash, &change, &serials);
        let mut rows = head;
        for (link, serial) in links.iter().zip(serials) {
            rows.push(ChainedRow {
                id: link.chain_seq * 10,
                chain_seq: link.chain_seq,
                at_micros: change.at_micros,
                actor: change.actor.into(),
                db_role: change.db_role.into(),
                action: change.action.into(),
                issuer_id: Some(change.issuer_id),
                serial: Some(serial.to_vec()),
                before: Some(change.before.into()),
                after: Some(change.after.into()),
                prev_hash: link.prev_hash.to_vec(),
                row_hash: link.row_hash.to_vec(),
            });
        }
        let verified = walk(&rows).unwrap();
        assert_eq!((verified.rows, verified.head_seq), (5, 5));
        assert_eq!(verified.head_hash, links[2].row_hash);
        assert!(extend_same(2, head_hash, &change, &[]).is_empty());
    }
}
