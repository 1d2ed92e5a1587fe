//! Postgres status reads: one indexed point read per certificate, over a pool to the primary
//! and, when `database.read_url` names a streaming standby, a pool to it.
//!
//! A replica that fails a read is skipped for [`REPLICA_RETRY`]: its reads go to the primary
//! meanwhile (counted in `jitocsp_replica_unavailable_total`), so a dead replica costs one
//! failed read per interval, not an error per miss. A replica that is up but behind is the
//! pipeline's concern (it checks every replica read against the changes it has heard of).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::{CertRecord, Lsn, ReadFrom, Revocation, StatusRead, StatusStore, StoreError};
use crate::db::tls::PgTarget;
use crate::ocsp::RevocationReason;
use crate::serial::Serial;
use crate::tls::TlsFiles;

/// Reads of `certificates` by primary key, batched (see the constant's documentation).
const LOOKUP_SQL: &str = crate::db::certificates::STATUS_LOOKUP;

/// How long a replica that failed a read is left alone before it is tried again.
pub const REPLICA_RETRY: Duration = Duration::from_secs(5);

/// The Postgres status store.
#[derive(Clone)]
pub struct PgStore {
    primary: Pool,
    /// `None` when status reads go to the primary.
    replica: Option<std::sync::Arc<Replica>>,
}

/// A read replica and when it may be tried again after a failure.
struct Replica {
    pool: Pool,
    /// Milliseconds since `epoch` before which the replica is skipped (0: never failed).
    skip_until: AtomicU64,
    epoch: Instant,
}

impl Replica {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn usable(&self) -> bool {
        self.skip_until.load(Ordering::Relaxed) <= self.now()
    }

    fn failed(&self, error: &StoreError) {
        let until = self.now() + REPLICA_RETRY.as_millis() as u64;
        if self.skip_until.swap(until, Ordering::Relaxed) <= self.now() {
            tracing::warn!(%error, "read replica failed; reading from the primary for {REPLICA_RETRY:?}");
        }
    }
}

/// The servers a [`PgStore`] reads from, their TLS files read: made once, cloned for each
/// store made from it (see [`crate::store::per_runtime`]).
#[derive(Clone)]
pub struct PgTargets {
    primary: PgTarget,
    /// `None` when status reads go to the primary.
    replica: Option<PgTarget>,
}

impl PgTargets {
    /// The primary `url` and, if given and different, the replica `read_url`. Both use `tls`
    /// when their URL's `sslmode` asks for TLS (see [`crate::db::tls`]); the files are read
    /// here, once.
    pub fn new(url: &str, read_url: Option<&str>, tls: &TlsFiles) -> Result<Self, StoreError> {
        let replica = match read_url.filter(|r| !r.is_empty() && *r != url) {
            Some(read_url) => Some(PgTarget::new(read_url, tls)?),
            None => None,
        };
        Ok(PgTargets { primary: PgTarget::new(url, tls)?, replica })
    }
}

/// The most connections each pool of a [`PgStore`] opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSizes {
    /// The pool status reads go to: the replica's, or the primary's when there is none.
    pub reads: usize,
    /// The primary's when there is a replica: it then serves only the reads the replica could
    /// not, and the few that must see the primary.
    pub primary_beside_replica: usize,
}

impl PoolSizes {
    /// The sizes `database.pool_size` gives an instance.
    pub fn of(pool_size: usize) -> Self {
        PoolSizes { reads: pool_size, primary_beside_replica: pool_size.div_ceil(2).max(2) }
    }

    /// A share of these among `workers` (rounded up), with at least `min_reads` connections
    /// for reads and one to the primary.
    pub fn divided(self, workers: usize, min_reads: usize) -> Self {
        let workers = workers.max(1);
        PoolSizes {
            reads: self.reads.div_ceil(workers).max(min_reads).max(1),
            primary_beside_replica: self.primary_beside_replica.div_ceil(workers).max(1),
        }
    }
}

impl PgStore {
    /// Pools for `targets`, of at most `sizes` connections. Connections are opened on demand,
    /// so start-up does not need the database (cached responses are still served while it is
    /// down), and each is driven on the runtime that opened it.
    pub fn new(targets: PgTargets, sizes: PoolSizes, timeout: std::time::Duration) -> Result<Self, StoreError> {
        let (replica, primary_size) = match targets.replica {
            Some(target) => {
                let replica = Replica {
                    pool: Self::pool(target, sizes.reads, timeout)?,
                    skip_until: AtomicU64::new(0),
                    epoch: Instant::now(),
                };
                (Some(std::sync::Arc::new(replica)), sizes.primary_beside_replica)
            }
            None => (None, sizes.reads),
        };
        Ok(PgStore { primary: Self::pool(targets.primary, primary_size, timeout)?, replica })
    }

    fn pool(target: PgTarget, pool_size: usize, timeout: std::time::Duration) -> Result<Pool, StoreError> {
        let PgTarget { config: mut pg_config, tls, .. } = target;
        pg_config.connect_timeout(timeout);
        pg_config.application_name("jitocsp");
        // These connections only make primary-key reads. Planner statistics can lag a bulk
        // import by minutes, and with them a batched read once planned a sequential scan of
        // the whole table (180 ms instead of 0.07 ms, measured): forbid that, and plan the
        // one statement once rather than at every execution.
        pg_config.options("-c enable_seqscan=off -c plan_cache_mode=force_generic_plan");
        let manager = Manager::from_config(pg_config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        Pool::builder(manager)
            .max_size(pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))
    }

    /// The primary's pool, for the few non-hot queries the server makes (purge bookkeeping).
    pub fn primary(&self) -> &Pool {
        &self.primary
    }

    async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
        pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        })
    }
}

impl StatusStore for PgStore {
    async fn lookup(&self, keys: &[(i32, Serial)], from: ReadFrom) -> Result<StatusRead, StoreError> {
        if let (ReadFrom::Replica, Some(replica)) = (from, &self.replica) {
            if replica.usable() {
                match read(&replica.pool, keys).await {
                    Ok(read) => return Ok(read),
                    Err(error) => replica.failed(&error),
                }
            }
            metrics::counter!(crate::metrics::REPLICA_UNAVAILABLE).increment(1);
        }
        read(&self.primary, keys).await
    }

    /// The primary only: a replica that is down does not make the responder unready, since
    /// its reads go to the primary.
    async fn ping(&self) -> Result<(), StoreError> {
        PgStore::client(&self.primary).await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// One batched point read on `pool`.
async fn read(pool: &Pool, keys: &[(i32, Serial)]) -> Result<StatusRead, StoreError> {
    let client = PgStore::client(pool).await?;
    let statement = client.prepare_cached(LOOKUP_SQL).await?;
    let issuer_ids: Vec<i32> = keys.iter().map(|(i, _)| *i).collect();
    let serials: Vec<&[u8]> = keys.iter().map(|(_, s)| s.as_bytes()).collect();
    let rows = client.query(&statement, &[&issuer_ids, &serials]).await?;
    let mut records = vec![None; keys.len()];
    let mut replayed = None;
    for row in rows {
        let ordinal: i64 = row.get(0);
        if let Some(text) = row.get::<_, Option<&str>>(5) {
            replayed = Some(Lsn::parse(text).ok_or_else(|| StoreError::BadLsn(text.to_owned()))?);
        }
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
        records[slot] = Some(CertRecord { not_after, revocation, version: row.get(4) });
    }
    Ok(StatusRead { records, replayed })
}
