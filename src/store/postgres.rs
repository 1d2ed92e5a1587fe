//! Postgres status reads: one indexed point read per certificate, over a pool.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{CertRecord, Revocation, StatusStore, StoreError};
use crate::ocsp::RevocationReason;
use crate::serial::Serial;

/// Reads of `certificates` by primary key. Several keys are read with one `= ANY` query over
/// parallel arrays, which Postgres answers with index lookups.
const LOOKUP_SQL: &str = "\
    SELECT k.i, c.not_after, c.reason, c.revoked_at, statement_timestamp() \
    FROM unnest($1::int[], $2::bytea[]) WITH ORDINALITY AS k(issuer_id, serial, i) \
    LEFT JOIN certificates c ON c.issuer_id = k.issuer_id AND c.serial = k.serial";

/// The Postgres status store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    /// Builds a pool for `url`; connections are opened on demand, so start-up does not need
    /// the database (cached responses are still served while it is down).
    pub fn new(url: &str, pool_size: usize, timeout: std::time::Duration) -> Result<Self, StoreError> {
        let mut pg_config: tokio_postgres::Config = url.parse()?;
        pg_config.connect_timeout(timeout);
        pg_config.application_name("jitocsp");
        // These connections only make primary-key reads. Planner statistics can lag a bulk
        // import by minutes, and with them a batched read once planned a sequential scan of
        // the whole table (180 ms instead of 0.07 ms, measured): forbid that, and plan the
        // one statement once rather than at every execution.
        pg_config.options("-c enable_seqscan=off -c plan_cache_mode=force_generic_plan");
        let manager = Manager::from_config(pg_config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(PgStore { pool })
    }

    /// The underlying pool, for the few non-hot queries the server makes (issuers, changes).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        })
    }
}

impl StatusStore for PgStore {
    async fn lookup(&self, keys: &[(i32, Serial)]) -> Result<(Vec<Option<CertRecord>>, DateTime<Utc>), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(LOOKUP_SQL).await?;
        let issuer_ids: Vec<i32> = keys.iter().map(|(i, _)| *i).collect();
        let serials: Vec<&[u8]> = keys.iter().map(|(_, s)| s.as_bytes()).collect();
        let rows = client.query(&statement, &[&issuer_ids, &serials]).await?;
        let mut records = vec![None; keys.len()];
        let mut read_at = Utc::now();
        for row in rows {
            let ordinal: i64 = row.get(0);
            read_at = row.get(4);
            let Some(slot) = usize::try_from(ordinal - 1).ok().filter(|i| *i < keys.len()) else { continue };
            let Some(not_after) = row.get::<_, Option<DateTime<Utc>>>(1) else { continue };
            let revocation = match (row.get::<_, Option<i16>>(2), row.get::<_, Option<DateTime<Utc>>>(3)) {
                (Some(code), Some(at)) => {
                    let (issuer_id, serial) = &keys[slot];
                    let reason = RevocationReason::from_code(code).ok_or_else(|| StoreError::BadReason {
                        issuer_id: *issuer_id,
                        serial: serial.clone(),
                        code,
                    })?;
                    Some(Revocation { at, reason })
                }
                _ => None,
            };
            records[slot] = Some(CertRecord { not_after, revocation });
        }
        Ok((records, read_at))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}
