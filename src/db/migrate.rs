//! `jitocsp migrate`: applies the schema migrations in `sql/`, in order, once each.
//!
//! The migrations are compiled into the binary (`include_str!`), so the binary and the schema
//! it expects always travel together. Each migration runs in its own transaction together
//! with the row that records it in `schema_migrations`, so a migration is either applied and
//! recorded or not at all. A session-level Postgres advisory lock serialises concurrent
//! `migrate` runs (say, two hosts deploying at once): the second waits, then finds nothing
//! left to do. Running `migrate` again is always safe.

use tokio_postgres::Client;

use super::connect;
use crate::tls::TlsFiles;

/// Every migration, in the order it is applied. Versions are the file's number; a new
/// migration gets the next number and is appended here.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_init.sql", include_str!("../../sql/0001_init.sql")),
    (2, "0002_cdn_purges.sql", include_str!("../../sql/0002_cdn_purges.sql")),
    (3, "0003_status_versions.sql", include_str!("../../sql/0003_status_versions.sql")),
    (4, "0004_audit_chain.sql", include_str!("../../sql/0004_audit_chain.sql")),
    (5, "0005_issuer_lifecycle.sql", include_str!("../../sql/0005_issuer_lifecycle.sql")),
    (6, "0006_audit_chain_head.sql", include_str!("../../sql/0006_audit_chain_head.sql")),
    (7, "0007_bulk_revocation.sql", include_str!("../../sql/0007_bulk_revocation.sql")),
];

/// Advisory lock key that `migrate` holds while it works ("jitocsp" in ASCII, as a bigint).
pub const MIGRATE_LOCK_KEY: i64 = 0x006a_6974_6f63_7370;

/// Why the schema could not be brought up to date. Always an operational failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to Postgres")]
    Connect(#[source] super::ConnectError),
    #[error("cannot take the migration lock or read schema_migrations")]
    Bookkeeping(#[source] tokio_postgres::Error),
    #[error("migration {version} ({file}) failed; nothing of it was applied")]
    Migration {
        version: i32,
        file: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the database has migration {0} applied, which this binary does not know; it is newer than this jitocsp")]
    UnknownVersion(i32),
}

impl MigrateError {
    /// Process exit status: every migration failure is operational.
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// Applies every migration not yet recorded. Returns the versions applied by this call
/// (empty when the schema was already current).
pub async fn run(database_url: &str, tls: &TlsFiles) -> Result<Vec<i32>, MigrateError> {
    let mut client = connect(database_url, tls).await.map_err(MigrateError::Connect)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY]).await.map_err(MigrateError::Bookkeeping)?;
    let result = apply_pending(&mut client).await;
    // Dropping the connection would release the lock too; unlocking says so explicitly.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY]).await;
    result
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    // Under the lock, so checking then creating cannot race (and no "already exists" notice).
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(MigrateError::Bookkeeping)?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (
                     version    integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(MigrateError::Bookkeeping)?;
    }
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(MigrateError::Bookkeeping)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(unknown) = done.iter().find(|v| !MIGRATIONS.iter().any(|(known, _, _)| known == *v)) {
        return Err(MigrateError::UnknownVersion(*unknown));
    }

    let mut applied = Vec::new();
    for &(version, file, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        let failed = |source| MigrateError::Migration { version, file, source };
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version, file, "applied migration");
        applied.push(version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (version, file, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
            assert!(file.starts_with(&format!("{version:04}_")), "{file}");
            assert!(!sql.trim().is_empty());
        }
    }
}
