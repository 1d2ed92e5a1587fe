//! Retries Redis purges that a revocation could not complete.
//!
//! The admin CLI records a `pending_purges` row in the revocation's transaction and deletes
//! it once the Redis keys are gone. Rows left behind (Redis was down) are retried here by
//! every running responder until they succeed. Correctness does not wait for this (the change
//! log already refuses the stale responses); it frees Redis of responses nobody may use.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::cache::keys::all_response_keys;
use crate::cache::ResponseCache;
use crate::metrics as m;
use crate::serial::Serial;

pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
const BATCH: i64 = 500;

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
        .query("SELECT issuer_id, serial FROM pending_purges ORDER BY since LIMIT $1", &[&BATCH])
        .await
        .map_err(|e| e.to_string())?;
    let mut done = 0;
    for row in rows {
        let issuer_id: i32 = row.get(0);
        let stored: Vec<u8> = row.get(1);
        let Ok(serial) = Serial::from_signed_be(&stored) else { continue };
        let started = std::time::Instant::now();
        let deleted = cache.delete(&all_response_keys(key_prefix, issuer_id, &serial)).await;
        metrics::histogram!(m::REDIS_SECONDS, "op" => "del").record(started.elapsed().as_secs_f64());
        if deleted.is_err() {
            metrics::counter!(m::REDIS_ERRORS, "op" => "del").increment(1);
        }
        match deleted {
            Ok(()) => {
                client
                    .execute("DELETE FROM pending_purges WHERE issuer_id = $1 AND serial = $2", &[&issuer_id, &stored])
                    .await
                    .map_err(|e| e.to_string())?;
                metrics::counter!(m::PURGE_RETRIES, "result" => "done").increment(1);
                tracing::info!(issuer_id, %serial, "pending purge completed");
                done += 1;
            }
            Err(error) => {
                metrics::counter!(m::PURGE_RETRIES, "result" => "failed").increment(1);
                let _ = client
                    .execute(
                        "UPDATE pending_purges SET attempts = attempts + 1, last_error = $3 WHERE issuer_id = $1 AND serial = $2",
                        &[&issuer_id, &stored, &error.to_string()],
                    )
                    .await;
                return Err(error.to_string());
            }
        }
    }
    Ok(done)
}
