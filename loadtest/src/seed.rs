//! `seed`: synthetic certificates into Postgres with binary COPY (about 70 bytes a row; ten
//! million rows is a few minutes here, most of it the primary-key index).

use std::time::Instant;

use anyhow::{bail, Context as _};
use chrono::{Duration as ChronoDuration, Utc};
use futures_util::pin_mut;
use jitocsp::db::tls::PgTarget;
use jitocsp::tls::TlsFiles;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::corpus::{Corpus, Status};

/// The TLS files for `url`s with `sslmode` set, from libpq's variables (`PGSSLROOTCERT`,
/// `PGSSLCERT`, `PGSSLKEY`), which psql in the same scripts honours too.
fn tls_files() -> TlsFiles {
    let var = |name| std::env::var(name).unwrap_or_default();
    TlsFiles::from_keys(&var("PGSSLROOTCERT"), &var("PGSSLCERT"), &var("PGSSLKEY"))
}

/// `url` as jitocsp reads it (`sslmode`, TLS verified), see `jitocsp::db::tls`.
fn target(url: &str) -> anyhow::Result<PgTarget> {
    PgTarget::new(url, &tls_files()).context("bad database URL or TLS files")
}

pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let target = target(url)?;
    let (client, connection) = target.config.connect(target.tls).await.context("connecting to Postgres")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

/// Creates the database named in `url` (connecting to the server's `postgres` database) if
/// it does not exist.
pub async fn create_database(url: &str) -> anyhow::Result<()> {
    let target = target(url)?;
    let name = target.config.get_dbname().context("the database URL names no database")?.to_owned();
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name {name:?}: use [A-Za-z0-9_]"
    );
    let mut admin = target.config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(target.tls).await.context("connecting to the `postgres` database")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        eprintln!("created database {name}");
    }
    Ok(())
}

pub async fn seed(url: &str, corpus: &Corpus, replace: bool, skip_if_same_count: bool) -> anyhow::Result<()> {
    let client = connect(url).await?;
    let now = Utc::now();
    let not_after = now + ChronoDuration::days(90);
    let revoked_at = now - ChronoDuration::days(1);
    for (position, issuer) in corpus.issuers.iter().enumerate() {
        let row =
            client.query_opt("SELECT id FROM issuers WHERE name = $1", &[&issuer.name]).await?.with_context(|| {
                format!("issuer {:?} is not in the database (add it with jitocsp admin issuer add)", issuer.name)
            })?;
        let id: i32 = row.get(0);
        let existing: i64 =
            client.query_one("SELECT count(*) FROM certificates WHERE issuer_id = $1", &[&id]).await?.get(0);
        if skip_if_same_count && existing == corpus.count as i64 {
            eprintln!("issuer {:?} already has its {existing} certificates", issuer.name);
            continue;
        }
        if existing > 0 {
            if !replace {
                bail!(
                    "issuer {:?} already has {existing} certificates; pass --replace to delete them first",
                    issuer.name
                );
            }
            client.execute("DELETE FROM certificates WHERE issuer_id = $1", &[&id]).await?;
        }
        let started = Instant::now();
        let sink = client
            .copy_in("COPY certificates (issuer_id, serial, not_after, reason, revoked_at) FROM STDIN (FORMAT binary)")
            .await?;
        let writer =
            BinaryCopyInWriter::new(sink, &[Type::INT4, Type::BYTEA, Type::TIMESTAMPTZ, Type::INT2, Type::TIMESTAMPTZ]);
        pin_mut!(writer);
        let mut revoked = 0u64;
        for index in 0..corpus.count {
            let serial = issuer.serial(index);
            let (reason, at) = match corpus.status(position, index) {
                Status::Good => (None, None),
                Status::Revoked => {
                    revoked += 1;
                    (Some(1i16), Some(revoked_at)) // keyCompromise
                }
            };
            writer.as_mut().write(&[&id, &&serial[..], &not_after, &reason, &at]).await?;
            if index > 0 && index % 1_000_000 == 0 {
                eprintln!(
                    "  {}: {index} rows, {:.0} rows/s",
                    issuer.name,
                    index as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        let rows = writer.finish().await?;
        eprintln!(
            "seeded issuer {:?} (id {id}): {rows} certificates, {revoked} revoked, in {:.1} s",
            issuer.name,
            started.elapsed().as_secs_f64()
        );
    }
    client.batch_execute("ANALYZE certificates").await?;
    Ok(())
}
