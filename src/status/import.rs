//! Import: bulk-load issued certificates as status good.
//!
//! Duplicates within the input are dropped, but the same serial with two different notAfter
//! values is refused (two certificates cannot share a serial). Rows are streamed with
//! `COPY ... FROM STDIN (FORMAT binary)` into a temporary table and inserted with `ON
//! CONFLICT DO NOTHING`, so re-importing is harmless: rows already present keep their status
//! and notAfter (a differing notAfter is counted, for a warning). One transaction, one audit
//! row for the whole import.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::{db, IssuerRow, Origin, Progress, StatusError};
use crate::db::{audit_log, certificates, PgError};
use crate::serial::Serial;

/// At most this many source names go into the audit row.
const MAX_SOURCES_AUDITED: usize = 20;

/// Imports of at least this many new rows refresh the table's statistics.
const ANALYZE_AFTER: u64 = 10_000;

/// Rows streamed between two progress reports.
const PROGRESS_STEP: usize = 100_000;

/// One certificate to import.
#[derive(Clone, Debug)]
pub struct ImportRow {
    pub serial: Serial,
    pub not_after: DateTime<Utc>,
    pub origin: Origin,
}

/// A validated import: at least one row, each serial once.
#[derive(Debug)]
pub struct ImportPlan {
    pub issuer: IssuerRow,
    rows: Vec<ImportRow>,
    /// Rows in the input, repeats included.
    given: usize,
    /// The inputs' names (files, "stdin"), for the audit row.
    pub sources: Vec<String>,
    /// Who is importing, for the audit log.
    pub actor: String,
}

impl ImportPlan {
    /// Drops repeated (serial, notAfter) rows; refuses the same serial with two notAfters,
    /// and an input without any row.
    pub fn new(
        issuer: IssuerRow,
        rows: Vec<ImportRow>,
        sources: Vec<String>,
        actor: String,
    ) -> Result<Self, StatusError> {
        let given = rows.len();
        let rows = dedupe(rows)?;
        if rows.is_empty() {
            return Err(StatusError::NothingToImport);
        }
        Ok(ImportPlan { issuer, rows, given, sources, actor })
    }

    /// The rows to import, each serial once.
    pub fn rows(&self) -> &[ImportRow] {
        &self.rows
    }
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    /// Rows in the input, repeats included.
    pub given: usize,
    /// Distinct certificates in the input.
    pub certificates: usize,
    pub inserted: u64,
    pub already_present: u64,
    /// Already present with another notAfter (left unchanged).
    pub not_after_differs: i64,
    /// The statistics refresh after a large import failed (the import itself is committed).
    pub analyze_failed: Option<PgError>,
    pub elapsed: Duration,
}

/// Carries out `plan` in one transaction, telling `progress` of the rows streamed, then of
/// the insert (one statement).
pub async fn import(
    client: &mut Client,
    plan: &ImportPlan,
    progress: &mut dyn Progress,
) -> Result<Imported, StatusError> {
    let issuer = &plan.issuer;
    let rows = &plan.rows;
    let started = Instant::now();
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    tx.batch_execute(certificates::IMPORT_TABLE).await.map_err(db("creating the import table"))?;
    let sink = tx.copy_in(certificates::IMPORT_COPY).await.map_err(db("starting COPY"))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::BYTEA, Type::TIMESTAMPTZ]);
    pin_mut!(writer);
    progress.stage("streaming", rows.len() as u64);
    for (i, row) in rows.iter().enumerate() {
        let serial: &[u8] = row.serial.as_bytes();
        let values: [&(dyn ToSql + Sync); 2] = [&serial, &row.not_after];
        writer.as_mut().write(&values).await.map_err(db("streaming rows (COPY)"))?;
        if (i + 1) % PROGRESS_STEP == 0 {
            progress.advance(i as u64 + 1);
        }
    }
    writer.as_mut().finish().await.map_err(db("finishing COPY"))?;
    if rows.len() % PROGRESS_STEP != 0 {
        progress.advance(rows.len() as u64);
    }
    progress.stage("inserting", rows.len() as u64);
    let inserted = certificates::insert_imported(&tx, issuer.id).await.map_err(db("inserting certificates"))?;
    progress.advance(rows.len() as u64);
    let already = rows.len() as u64 - inserted;
    let mismatched = if already > 0 {
        certificates::count_not_after_mismatches(&tx, issuer.id)
            .await
            .map_err(db("comparing notAfter of existing rows"))?
    } else {
        0
    };
    let audited_sources: Vec<&String> = plan.sources.iter().take(MAX_SOURCES_AUDITED).collect();
    let after = serde_json::json!({
        "certificates": rows.len(),
        "inserted": inserted,
        "already_present": already,
        "sources": audited_sources,
        "source_count": plan.sources.len(),
    });
    audit_log::insert_issuer_event(&tx, &plan.actor, "import", issuer.id, &after)
        .await
        .map_err(db("writing the audit log"))?;
    tx.commit().await.map_err(db("committing the import"))?;
    // A bulk import can multiply the table's size before autovacuum notices; fresh statistics
    // keep every planner decision on it honest. Best effort: the import itself is done.
    let analyze_failed =
        if inserted >= ANALYZE_AFTER { certificates::analyze(client).await.err().map(PgError::from) } else { None };
    let elapsed = started.elapsed();
    tracing::info!(target: "jitocsp::audit", actor = %plan.actor, action = "import", issuer = %issuer.name,
        issuer_id = issuer.id, certificates = rows.len(), inserted, already_present = already, "import");
    Ok(Imported {
        given: plan.given,
        certificates: rows.len(),
        inserted,
        already_present: already,
        not_after_differs: mismatched,
        analyze_failed,
        elapsed,
    })
}

/// Drops repeated (serial, notAfter) pairs; the same serial with two notAfters is refused.
fn dedupe(rows: Vec<ImportRow>) -> Result<Vec<ImportRow>, StatusError> {
    let mut first: HashMap<Box<[u8]>, usize> = HashMap::with_capacity(rows.len());
    let mut keep: Vec<ImportRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match first.get(row.serial.as_bytes()) {
            None => {
                first.insert(row.serial.as_bytes().into(), keep.len());
                keep.push(row);
            }
            Some(&i) if keep[i].not_after != row.not_after => {
                let earlier = &keep[i];
                return Err(StatusError::ConflictingNotAfter {
                    serial: row.serial,
                    first: earlier.origin.clone(),
                    first_not_after: earlier.not_after,
                    second: row.origin,
                    second_not_after: row.not_after,
                });
            }
            Some(_) => {}
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lines: &[&str]) -> Vec<ImportRow> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (serial, not_after) = l.split_once(',').unwrap();
                ImportRow {
                    serial: Serial::from_hex(serial).unwrap(),
                    not_after: DateTime::parse_from_rfc3339(not_after).unwrap().with_timezone(&Utc),
                    origin: Origin::Line { source: "stdin".into(), line: i + 1 },
                }
            })
            .collect()
    }

    fn issuer() -> IssuerRow {
        IssuerRow { id: 1, name: "ca".into(), cert_der: Vec::new() }
    }

    #[test]
    fn duplicates_dropped_conflicts_named() {
        let given = rows(&["01,2030-01-01T00:00:00Z", "0001,2030-01-01T00:00:00Z", "02,2030-01-01T00:00:00Z"]);
        let plan = ImportPlan::new(issuer(), given, vec!["stdin".into()], "me".into()).unwrap();
        assert_eq!(plan.rows().len(), 2);
        assert_eq!(plan.given, 3);
        let given = rows(&["01,2030-01-01T00:00:00Z", "01,2031-01-01T00:00:00Z"]);
        let e = ImportPlan::new(issuer(), given, vec![], "me".into()).unwrap_err();
        assert!(e.is_input());
        let e = e.to_string();
        assert!(e.contains("serial 01") && e.contains("stdin line 1 says") && e.contains("stdin line 2 says"), "{e}");
    }

    #[test]
    fn an_empty_import_is_refused() {
        let e = ImportPlan::new(issuer(), Vec::new(), vec!["stdin".into()], "me".into()).unwrap_err();
        assert!(matches!(e, StatusError::NothingToImport) && e.is_input());
    }
}
