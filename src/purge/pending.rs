//! The `pending_purges` bookkeeping, and the retry of Redis purges that a revocation could
//! not complete.
//!
//! The admin CLI records a `pending_purges` row in the revocation's transaction and settles
//! it ([`settle`]) once the Redis keys are gone. Rows left behind (Redis was down) are retried
//! here by every running responder until they succeed, and settled the same way: a row is
//! deleted only if its `since` is still the one the purge was made for, because a change
//! committed in between re-armed it and needs its own purge. Correctness does not wait for
//! this (the change log already refuses the stale responses); it frees Redis of responses
//! nobody may use.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Client;

use crate::cache::keys::all_response_keys;
use crate::cache::ResponseCache;
use crate::metrics as m;
use crate::serial::Serial;

pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
const BATCH: i64 = 500;

/// One certificate whose cached responses must go.
#[derive(Clone, Debug)]
pub struct PurgeTarget {
    pub issuer_id: i32,
    pub serial: Serial,
    /// The `pending_purges.since` this purge settles, if there is a row to settle.
    pub since: Option<DateTime<Utc>>,
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
pub async fn retry_once<C: ResponseCache>(pool: &Pool, cache: &C, key_prefix: &str) -> Result<usize, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query("SELECT issuer_id, serial, since FROM pending_purges ORDER BY since LIMIT $1", &[&BATCH])
        .await
        .map_err(|e| e.to_string())?;
    let mut done = 0;
    for row in rows {
        let issuer_id: i32 = row.get(0);
        let stored: Vec<u8> = row.get(1);
        let Ok(serial) = Serial::from_signed_be(&stored) else { continue };
        let target = PurgeTarget { issuer_id, serial: serial.clone(), since: Some(row.get(2)) };
        let started = std::time::Instant::now();
        let deleted = cache.delete(&all_response_keys(key_prefix, issuer_id, &serial)).await;
        metrics::histogram!(m::REDIS_SECONDS, "op" => "del").record(started.elapsed().as_secs_f64());
        if deleted.is_err() {
            metrics::counter!(m::REDIS_ERRORS, "op" => "del").increment(1);
        }
        match deleted {
            Ok(()) => {
                settle(&client, &[&target], None).await.map_err(|e| e.to_string())?;
                metrics::counter!(m::PURGE_RETRIES, "result" => "done").increment(1);
                tracing::info!(issuer_id, %serial, "pending purge completed");
                done += 1;
            }
            Err(error) => {
                metrics::counter!(m::PURGE_RETRIES, "result" => "failed").increment(1);
                let _ = settle(&client, &[&target], Some(&error.to_string())).await;
                return Err(error.to_string());
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
    let result = match error {
        None => {
            client
                .execute(
                    "DELETE FROM pending_purges p \
                     USING unnest($1::int4[], $2::bytea[], $3::timestamptz[]) AS d(issuer_id, serial, since) \
                     WHERE p.issuer_id = d.issuer_id AND p.serial = d.serial AND p.since = d.since",
                    &[&ids, &serials, &since],
                )
                .await
        }
        Some(error) => {
            client
                .execute(
                    "UPDATE pending_purges p SET attempts = p.attempts + 1, last_error = $4 \
                     FROM unnest($1::int4[], $2::bytea[], $3::timestamptz[]) AS d(issuer_id, serial, since) \
                     WHERE p.issuer_id = d.issuer_id AND p.serial = d.serial AND p.since = d.since",
                    &[&ids, &serials, &since, &error],
                )
                .await
        }
    };
    result.map(drop)
}
