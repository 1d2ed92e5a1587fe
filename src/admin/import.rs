//! `admin import`: bulk-load issued certificates as status good.
//!
//! All input is parsed first (every file, every stdin line); any error exits 2 before
//! anything is written. Duplicates within the input are dropped, but the same serial with two
//! different notAfter values is an error (two certificates cannot share a serial). Rows are
//! streamed with `COPY ... FROM STDIN (FORMAT binary)` into a temporary table and inserted
//! with `ON CONFLICT DO NOTHING`, so re-importing is harmless: rows already present keep their
//! status and notAfter (a differing notAfter is reported as a warning). One transaction, one
//! audit row for the whole import.

use std::collections::HashMap;

use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::inputs::{read_cert_file, read_import_stdin, ImportRow};
use super::{actor, connect, db, find_issuer, AdminError, ImportArgs};
use crate::config::Config;

/// At most this many source names go into the audit row.
const MAX_SOURCES_AUDITED: usize = 20;

/// Imports of at least this many new rows refresh the table's statistics.
const ANALYZE_AFTER: u64 = 10_000;

pub async fn run(args: ImportArgs, config: &Config) -> Result<(), AdminError> {
    let stdin_count = args.files.iter().filter(|f| f.as_os_str() == "-").count();
    if stdin_count > 1 {
        return Err(AdminError::input("'-' (stdin) may be given only once"));
    }
    let mut client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;

    // 1. Parse everything; nothing is written yet.
    let mut rows: Vec<ImportRow> = Vec::new();
    let mut sources = Vec::new();
    for path in &args.files {
        if path.as_os_str() == "-" {
            let parsed = tokio::task::spawn_blocking(read_import_stdin)
                .await
                .map_err(|e| AdminError::Operational(format!("reading stdin: {e}")))??;
            rows.extend(parsed);
            sources.push("stdin".to_owned());
        } else {
            for cert in read_cert_file(path, &issuer.name, &issuer.cert_der)? {
                rows.push(ImportRow { serial: cert.serial, not_after: cert.not_after, origin: cert.origin });
            }
            sources.push(path.display().to_string());
        }
    }
    let given = rows.len();
    let rows = dedupe(rows)?;
    if rows.is_empty() {
        return Err(AdminError::input("nothing to import: the input holds no certificate"));
    }

    // 2. Write: COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING.
    let started = std::time::Instant::now();
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    tx.batch_execute(
        "CREATE TEMPORARY TABLE jitocsp_import (serial bytea NOT NULL, not_after timestamptz NOT NULL) \
         ON COMMIT DROP",
    )
    .await
    .map_err(db("creating the import table"))?;
    let sink = tx
        .copy_in("COPY jitocsp_import (serial, not_after) FROM STDIN (FORMAT binary)")
        .await
        .map_err(db("starting COPY"))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::BYTEA, Type::TIMESTAMPTZ]);
    pin_mut!(writer);
    for row in &rows {
        let serial: &[u8] = row.serial.as_bytes();
        let values: [&(dyn ToSql + Sync); 2] = [&serial, &row.not_after];
        writer.as_mut().write(&values).await.map_err(db("streaming rows (COPY)"))?;
    }
    writer.as_mut().finish().await.map_err(db("finishing COPY"))?;
    let inserted = tx
        .execute(
            "INSERT INTO certificates (issuer_id, serial, not_after) \
             SELECT $1, serial, not_after FROM jitocsp_import \
             ON CONFLICT (issuer_id, serial) DO NOTHING",
            &[&issuer.id],
        )
        .await
        .map_err(db("inserting certificates"))?;
    let already = rows.len() as u64 - inserted;
    let mismatched: i64 = if already > 0 {
        tx.query_one(
            "SELECT count(*) FROM jitocsp_import t JOIN certificates c \
             ON c.issuer_id = $1 AND c.serial = t.serial WHERE c.not_after <> t.not_after",
            &[&issuer.id],
        )
        .await
        .map_err(db("comparing notAfter of existing rows"))?
        .get(0)
    } else {
        0
    };
    let who = actor();
    let audited_sources: Vec<&String> = sources.iter().take(MAX_SOURCES_AUDITED).collect();
    let after = serde_json::json!({
        "certificates": rows.len(),
        "inserted": inserted,
        "already_present": already,
        "sources": audited_sources,
        "source_count": sources.len(),
    });
    tx.execute(
        "INSERT INTO audit_log (actor, action, issuer_id, after) VALUES ($1, 'import', $2, $3::text::jsonb)",
        &[&who, &issuer.id, &after.to_string()],
    )
    .await
    .map_err(db("writing the audit log"))?;
    tx.commit().await.map_err(db("committing the import"))?;
    // A bulk import can multiply the table's size before autovacuum notices; fresh statistics
    // keep every planner decision on it honest. Best effort: the import itself is done.
    if inserted >= ANALYZE_AFTER {
        if let Err(e) = client.batch_execute("ANALYZE certificates").await {
            eprintln!("warning: ANALYZE certificates after the import failed: {e}");
        }
    }
    let elapsed = started.elapsed();
    tracing::info!(target: "jitocsp::audit", actor = %who, action = "import", issuer = %issuer.name,
        issuer_id = issuer.id, certificates = rows.len(), inserted, already_present = already, "import");

    println!(
        "imported into issuer {:?}: {} certificates read, {} inserted, {} already present ({:.1}s)",
        issuer.name,
        given,
        inserted,
        already,
        elapsed.as_secs_f64()
    );
    if given > rows.len() {
        println!("{} duplicate lines in the input were ignored", given - rows.len());
    }
    if mismatched > 0 {
        eprintln!(
            "warning: {mismatched} already-present certificates have a different notAfter in the \
             database; they were left unchanged"
        );
    }
    Ok(())
}

/// Drops repeated (serial, notAfter) pairs; the same serial with two notAfters is an error.
fn dedupe(rows: Vec<ImportRow>) -> Result<Vec<ImportRow>, AdminError> {
    let mut first: HashMap<Box<[u8]>, usize> = HashMap::with_capacity(rows.len());
    let mut keep = Vec::with_capacity(rows.len());
    for row in rows {
        match first.get(row.serial.as_bytes()) {
            None => {
                first.insert(row.serial.as_bytes().into(), keep.len());
                keep.push(row);
            }
            Some(&i) => {
                let earlier: &ImportRow = &keep[i];
                if earlier.not_after != row.not_after {
                    return Err(AdminError::input(format!(
                        "serial {} appears twice with different notAfter: {} says {}, {} says {}",
                        row.serial,
                        earlier.origin,
                        earlier.not_after.to_rfc3339(),
                        row.origin,
                        row.not_after.to_rfc3339()
                    )));
                }
            }
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::super::inputs::parse_import_lines;
    use super::*;

    #[test]
    fn duplicates_dropped_conflicts_named() {
        let lines: Vec<String> = ["01,2030-01-01T00:00:00Z", "0001,2030-01-01T00:00:00Z", "02,2030-01-01T00:00:00Z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = dedupe(parse_import_lines("stdin", &lines).unwrap()).unwrap();
        assert_eq!(rows.len(), 2);
        let lines: Vec<String> =
            ["01,2030-01-01T00:00:00Z", "01,2031-01-01T00:00:00Z"].iter().map(|s| s.to_string()).collect();
        let e = dedupe(parse_import_lines("stdin", &lines).unwrap()).unwrap_err().to_string();
        assert!(e.contains("serial 01") && e.contains("stdin line 2"), "{e}");
    }
}
