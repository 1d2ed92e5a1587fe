//! Deleting cached responses from Redis after a status change, the `pending_purges`
//! bookkeeping around it, and the retry of purges that could not complete.
//!
//! A status change records a `pending_purges` row (with `since` = its transaction's `now()`)
//! in its own transaction. After the commit, [`purge_now`] deletes the Redis keys
//! ([`all_response_keys`]) and settles the row ([`settle`]): deleted only if `since` is still
//! the value the change wrote (or, for `admin purge`, the value read before deleting the
//! keys), because a change committed in between re-armed it and needs its own purge. When
//! Redis fails, the row stays with `attempts` and `last_error` updated, and every running
//! responder retries it ([`run`]) until it succeeds, settling it the same way. Correctness
//! does not wait for this (the change log already refuses the stale responses); it frees
//! Redis of responses nobody may use.

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
const BATCH: i64 = 500;

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
    /// The `pending_purges.since` this purge settles, if there is a row to settle.
    pub since: Option<DateTime<Utc>>,
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

/// Deletes every target's keys now (a connection of its own to Redis), then settles the
/// `pending_purges` rows: deleted for purged targets, `attempts`/`last_error` updated for the
/// others. Bookkeeping failures are returned beside the outcome.
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
    if let Err(e) = settle(client, &done, None).await {
        warnings.push(SettleWarning::NotRemoved(e.into()));
    }
    let outcome = match error {
        None => PurgeOutcome::Done { purged: done.len() },
        Some(error) => {
            if let Err(e) = settle(client, &left, Some(&error.to_string())).await {
                warnings.push(SettleWarning::NotRecorded(e.into()));
            }
            PurgeOutcome::Failed { purged: done.len(), pending: left.len(), error }
        }
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

/// One pass: purges up to a batch of pending rows. Returns how many were completed.
pub async fn retry_once<C: ResponseCache>(pool: &Pool, cache: &C, key_prefix: &str) -> Result<usize, PendingError> {
    let client = pool.get().await?;
    let rows = pending_purges::oldest(&**client, Some(BATCH)).await.map_err(PgError::from)?;
    let mut done = 0;
    for row in rows {
        let issuer_id = row.issuer_id;
        let Ok(serial) = Serial::from_signed_be(&row.serial) else { continue };
        let target = PurgeTarget { issuer_id, serial: serial.clone(), since: Some(row.since) };
        let started = std::time::Instant::now();
        let deleted = cache.delete(&all_response_keys(key_prefix, issuer_id, &serial)).await;
        metrics::histogram!(m::REDIS_SECONDS, "op" => "del").record(started.elapsed().as_secs_f64());
        if deleted.is_err() {
            metrics::counter!(m::REDIS_ERRORS, "op" => "del").increment(1);
        }
        match deleted {
            Ok(()) => {
                settle(&client, &[&target], None).await.map_err(PgError::from)?;
                metrics::counter!(m::PURGE_RETRIES, "result" => "done").increment(1);
                tracing::info!(issuer_id, %serial, "pending purge completed");
                done += 1;
            }
            Err(error) => {
                metrics::counter!(m::PURGE_RETRIES, "result" => "failed").increment(1);
                let _ = settle(&client, &[&target], Some(&error.to_string())).await;
                return Err(error.into());
            }
        }
    }
    Ok(done)
}

/// Removes (`error` None) or marks as failed (`error` Some) the rows of `targets` that still
/// have the `since` they were purged for.
pub async fn settle(
    client: &Client,
    targets: &[&PurgeTarget],
    error: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let targets: Vec<&&PurgeTarget> = targets.iter().filter(|t| t.since.is_some()).collect();
    if targets.is_empty() {
        return Ok(());
    }
    let ids: Vec<i32> = targets.iter().map(|t| t.issuer_id).collect();
    let serials: Vec<&[u8]> = targets.iter().map(|t| t.serial.as_bytes()).collect();
    let since: Vec<DateTime<Utc>> = targets.iter().filter_map(|t| t.since).collect();
    match error {
        None => pending_purges::delete_settled(client, &ids, &serials, &since).await?,
        Some(error) => pending_purges::record_failure(client, &ids, &serials, &since, error).await?,
    };
    Ok(())
}
