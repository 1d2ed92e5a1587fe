//! Deleting cached responses from Redis after a status change, the `pending_purges`
//! bookkeeping around it, and the retry of purges that could not complete.
//!
//! A status change records the purges it owes in its own transaction: one
//! `pending_purge_batches` row holding its serials (sql/0007). After the commit,
//! [`purge_now`] deletes the Redis keys ([`all_response_keys`]) and settles the row
//! ([`settle`]): deleted once every serial's keys are gone. A row is never re-armed (a later
//! change owes its own row), so deleting it cannot drop another change's purge. When Redis
//! fails, the row stays with `attempts` and `last_error` updated, and every running responder
//! retries it ([`run`]) until it succeeds, settling it the same way.
//!
//! Rows of the older `pending_purges` (one per certificate, written before sql/0007 or by an
//! older admin CLI) are worked off too, under their own rule: deleted only if `since` is still
//! the value the purge was made for (for `admin purge`, the value read before deleting the
//! keys), because a change committed in between re-armed the row and needs its own purge.
//!
//! Correctness does not wait for any of this (the change log already refuses the stale
//! responses); it frees Redis of responses nobody may use.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::stream::{self, StreamExt};
use tokio_postgres::Client;

use crate::cache::keys::all_response_keys;
use crate::cache::redis::{RedisCache, RedisMode};
use crate::cache::{CacheError, ResponseCache};
use crate::config::Config;
use crate::db::{pending_purges, PgError};
use crate::metrics as m;
use crate::serial::Serial;

pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// `pending_purges` rows per retry pass.
const BATCH: i64 = 500;
/// `pending_purge_batches` rows per retry pass (each holds up to a revocation batch of serials).
const BATCHES_PER_PASS: i64 = 4;

/// Shortest Redis timeout a one-off purge uses, whatever `redis.timeout_ms` says: the admin
/// tool runs once, not on the request path, and a purge that gives up too early leaves work.
pub const MIN_ADMIN_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Serials per DEL in single mode (4 keys each). Cluster mode deletes one certificate's keys
/// (one hash slot) per DEL.
const SERIALS_PER_DEL: usize = 128;
/// DEL commands in flight at once.
const PARALLEL_DELS: usize = 8;

/// One certificate whose cached responses must go.
#[derive(Clone, Debug)]
pub struct PurgeTarget {
    pub issuer_id: i32,
    pub serial: Serial,
    /// The record this purge settles.
    pub owed: Owed,
}

/// Where a purge is recorded as owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owed {
    /// Nowhere (a purge asked for by hand).
    Nothing,
    /// A `pending_purge_batches` row: settled once every one of its certificates is purged.
    Batch(i64),
    /// A `pending_purges` row: settled only if its `since` is still this one.
    Row(DateTime<Utc>),
}

/// Why a retry pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] PgError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What became of a purge.
#[derive(Debug)]
pub enum PurgeOutcome {
    /// Every target's keys are gone.
    Done { purged: usize },
    /// Redis failed; `pending` targets still have their keys (and their rows).
    Failed { purged: usize, pending: usize, error: CacheError },
}

/// Bookkeeping that failed after a purge; harmless (a row left behind only costs a repeated
/// purge), so it is reported, not returned as an error.
#[derive(Debug)]
pub enum SettleWarning {
    /// The keys are gone but the rows could not be removed.
    NotRemoved(PgError),
    /// The failed attempt could not be recorded on the rows.
    NotRecorded(PgError),
}

/// The Redis timeout a one-off purge uses.
pub fn admin_redis_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.redis.timeout_ms).max(MIN_ADMIN_REDIS_TIMEOUT)
}

/// Deletes every target's keys now (a connection of its own to Redis), then settles what
/// they owed ([`settle`]). Bookkeeping failures are returned beside the outcome.
pub async fn purge_now(
    config: &Config,
    client: &Client,
    targets: &[PurgeTarget],
) -> (PurgeOutcome, Vec<SettleWarning>) {
    let mut warnings = Vec::new();
    if targets.is_empty() {
        return (PurgeOutcome::Done { purged: 0 }, warnings);
    }
    let (purged, error) = delete_keys(config, targets).await;
    let (done, left): (Vec<_>, Vec<_>) = targets.iter().enumerate().partition(|(i, _)| purged[*i]);
    let done: Vec<&PurgeTarget> = done.into_iter().map(|(_, t)| t).collect();
    let left: Vec<&PurgeTarget> = left.into_iter().map(|(_, t)| t).collect();
    warnings.extend(settle(client, &done, &left, error.as_ref().map(|e| e.to_string()).as_deref()).await);
    let outcome = match error {
        None => PurgeOutcome::Done { purged: done.len() },
        Some(error) => PurgeOutcome::Failed { purged: done.len(), pending: left.len(), error },
    };
    (outcome, warnings)
}

/// Deletes keys; returns which targets were purged and the first error.
async fn delete_keys(config: &Config, targets: &[PurgeTarget]) -> (Vec<bool>, Option<CacheError>) {
    let mut purged = vec![false; targets.len()];
    let timeout = admin_redis_timeout(config);
    let cache = match RedisCache::connect(
        config.redis.mode,
        &config.redis.url,
        &config.redis.nodes,
        &config.redis.tls_files(),
        timeout,
    )
    .await
    {
        Ok(cache) => cache,
        Err(e) => return (purged, Some(e)),
    };
    let per_del = match config.redis.mode {
        RedisMode::Single => SERIALS_PER_DEL,
        _ => 1,
    };
    let prefix = &config.cache.key_prefix;
    let failed = AtomicBool::new(false);
    // Err(None): skipped because an earlier DEL failed.
    let results: Vec<(usize, usize, Result<(), Option<CacheError>>)> =
        stream::iter(targets.chunks(per_del).enumerate().map(|(n, chunk)| (n * per_del, chunk)))
            .map(|(start, chunk)| {
                let cache = &cache;
                let failed = &failed;
                async move {
                    if failed.load(Ordering::Relaxed) {
                        return (start, chunk.len(), Err(None));
                    }
                    let keys: Vec<String> =
                        chunk.iter().flat_map(|t| all_response_keys(prefix, t.issuer_id, &t.serial)).collect();
                    let result = cache.delete(&keys).await.map_err(Some);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    (start, chunk.len(), result)
                }
            })
            .buffer_unordered(PARALLEL_DELS)
            .collect()
            .await;
    let mut first_error = None;
    for (start, len, result) in results {
        match result {
            Ok(()) => purged[start..start + len].iter_mut().for_each(|p| *p = true),
            Err(Some(e)) => {
                first_error.get_or_insert(e);
            }
            Err(None) => {}
        }
    }
    (purged, first_error)
}

/// Runs forever, retrying pending purges every [`RETRY_INTERVAL`].
pub async fn run<C: ResponseCache>(pool: Pool, cache: C, key_prefix: String) {
    let mut interval = tokio::time::interval(RETRY_INTERVAL);
    loop {
        interval.tick().await;
        if let Err(error) = retry_once(&pool, &cache, &key_prefix).await {
            tracing::warn!(%error, "retrying pending purges failed");
        }
    }
}

/// One pass: purges up to `BATCHES_PER_PASS` owed batches and `BATCH` `pending_purges`
/// rows. Returns how many certificates' purges were completed.
pub async fn retry_once<C: ResponseCache>(pool: &Pool, cache: &C, key_prefix: &str) -> Result<usize, PendingError> {
    let client = pool.get().await?;
    let mut done = 0;
    for batch in pending_purges::oldest_batches(&**client, Some(BATCHES_PER_PASS)).await.map_err(PgError::from)? {
        done += retry_batch(&client, cache, key_prefix, batch).await?;
    }
    let rows = pending_purges::oldest(&**client, Some(BATCH)).await.map_err(PgError::from)?;
    for row in rows {
        let issuer_id = row.issuer_id;
        let Ok(serial) = Serial::from_signed_be(&row.serial) else { continue };
        let target = PurgeTarget { issuer_id, serial: serial.clone(), owed: Owed::Row(row.since) };
        match delete_one(cache, key_prefix, &target).await {
            Ok(()) => {
                first_error(settle(&client, &[&target], &[], None).await)?;
                metrics::counter!(m::PURGE_RETRIES, "result" => "done").increment(1);
                tracing::info!(issuer_id, %serial, "pending purge completed");
                done += 1;
            }
            Err(error) => {
                metrics::counter!(m::PURGE_RETRIES, "result" => "failed").increment(1);
                let _ = settle(&client, &[], &[&target], Some(&error.to_string())).await;
                return Err(error.into());
            }
        }
    }
    Ok(done)
}

/// Deletes one certificate's keys (one DEL: the keys share a cluster hash slot).
async fn delete_one<C: ResponseCache>(cache: &C, key_prefix: &str, target: &PurgeTarget) -> Result<(), CacheError> {
    let started = std::time::Instant::now();
    let deleted = cache.delete(&all_response_keys(key_prefix, target.issuer_id, &target.serial)).await;
    metrics::histogram!(m::REDIS_SECONDS, "op" => "del").record(started.elapsed().as_secs_f64());
    if deleted.is_err() {
        metrics::counter!(m::REDIS_ERRORS, "op" => "del").increment(1);
    }
    deleted
}

/// Purges every certificate of one owed batch, [`PARALLEL_DELS`] at a time, then deletes the
/// row; on the first Redis failure, records it on the row and stops.
async fn retry_batch<C: ResponseCache>(
    client: &Client,
    cache: &C,
    key_prefix: &str,
    batch: pending_purges::PendingBatch,
) -> Result<usize, PendingError> {
    let owed = Owed::Batch(batch.id);
    let targets: Vec<PurgeTarget> = batch
        .serials
        .iter()
        .filter_map(|s| Serial::from_signed_be(s).ok())
        .map(|serial| PurgeTarget { issuer_id: batch.issuer_id, serial, owed })
        .collect();
    let mut failed = None;
    for chunk in targets.chunks(PARALLEL_DELS) {
        let deletes: Vec<_> = chunk.iter().map(|target| delete_one(cache, key_prefix, target)).collect();
        if let Some(error) = futures_util::future::join_all(deletes).await.into_iter().find_map(Result::err) {
            failed = Some(error);
            break;
        }
    }
    let all: Vec<&PurgeTarget> = targets.iter().collect();
    match failed {
        None => {
            first_error(settle(client, &all, &[], None).await)?;
            metrics::counter!(m::PURGE_RETRIES, "result" => "done").increment(targets.len() as u64);
            tracing::info!(issuer_id = batch.issuer_id, certificates = targets.len(), "pending purges completed");
            Ok(targets.len())
        }
        Some(error) => {
            metrics::counter!(m::PURGE_RETRIES, "result" => "failed").increment(1);
            let _ = settle(client, &[], &all, Some(&error.to_string())).await;
            Err(error.into())
        }
    }
}

/// Settles what the purges of `done` (keys deleted) and `left` (not deleted, because of
/// `error`) owed: a batch row is deleted when all its certificates are in `done`, otherwise
/// its failed attempt is recorded; a `pending_purges` row is deleted (done) or has its failed
/// attempt recorded (left) only if its `since` is still the one the purge was made for.
pub async fn settle(
    client: &Client,
    done: &[&PurgeTarget],
    left: &[&PurgeTarget],
    error: Option<&str>,
) -> Vec<SettleWarning> {
    let batches = |targets: &[&PurgeTarget]| -> BTreeSet<i64> {
        targets.iter().filter_map(|t| if let Owed::Batch(id) = t.owed { Some(id) } else { None }).collect()
    };
    let unfinished = batches(left);
    let finished: Vec<i64> = batches(done).difference(&unfinished).copied().collect();
    let unfinished: Vec<i64> = unfinished.into_iter().collect();
    let mut warnings = Vec::new();
    let removed = async {
        if !finished.is_empty() {
            pending_purges::delete_batches(client, &finished).await?;
        }
        settle_rows(client, done, None).await
    };
    if let Err(e) = removed.await {
        warnings.push(SettleWarning::NotRemoved(e.into()));
    }
    if let Some(error) = error {
        let recorded = async {
            if !unfinished.is_empty() {
                pending_purges::record_batch_failure(client, &unfinished, error).await?;
            }
            settle_rows(client, left, Some(error)).await
        };
        if let Err(e) = recorded.await {
            warnings.push(SettleWarning::NotRecorded(e.into()));
        }
    }
    warnings
}

/// The `pending_purges` part of [`settle`]: removes (`error` None) or marks as failed
/// (`error` Some) the rows of `targets` that still have the `since` they were purged for.
async fn settle_rows(
    client: &Client,
    targets: &[&PurgeTarget],
    error: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let rows: Vec<(&PurgeTarget, DateTime<Utc>)> =
        targets.iter().filter_map(|t| if let Owed::Row(since) = t.owed { Some((*t, since)) } else { None }).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i32> = rows.iter().map(|(t, _)| t.issuer_id).collect();
    let serials: Vec<&[u8]> = rows.iter().map(|(t, _)| t.serial.as_bytes()).collect();
    let since: Vec<DateTime<Utc>> = rows.iter().map(|(_, since)| *since).collect();
    match error {
        None => pending_purges::delete_settled(client, &ids, &serials, &since).await?,
        Some(error) => pending_purges::record_failure(client, &ids, &serials, &since, error).await?,
    };
    Ok(())
}

impl SettleWarning {
    /// For the retry loop, where a failed settle ends the pass.
    fn into_error(self) -> PendingError {
        match self {
            SettleWarning::NotRemoved(e) | SettleWarning::NotRecorded(e) => PendingError::Database(e),
        }
    }
}

/// The first of `warnings`, as the retry loop's error.
fn first_error(warnings: Vec<SettleWarning>) -> Result<(), PendingError> {
    warnings.into_iter().next().map_or(Ok(()), |w| Err(w.into_error()))
}
