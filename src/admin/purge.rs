//! Deleting cached responses from Redis, and the `pending_purges` bookkeeping around it.
//!
//! A status change writes a `pending_purges` row (with `since` = its transaction's `now()`)
//! in the same transaction. After commit the admin command deletes the Redis keys
//! ([`all_response_keys`]) and then deletes the row, but only if `since` is still the value
//! it wrote (or, for `admin purge`, the value it read before deleting the keys): a change
//! that committed in between re-armed the row and still needs its own purge.
//! When Redis fails, the rows stay (with `attempts` and `last_error` updated) and running
//! responders retry them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use tokio_postgres::Client;

use super::inputs::{parse_serial, Origin};
use super::{connect, db, find_issuer, AdminError, CertArgs};
use crate::cache::keys::all_response_keys;
use crate::cache::redis::{RedisCache, RedisMode};
use crate::cache::ResponseCache;
use crate::config::Config;
use crate::serial::Serial;

use crate::purge::pending::settle;
pub use crate::purge::pending::PurgeTarget;

/// Shortest Redis timeout the admin tool uses, whatever `redis.timeout_ms` says: the tool
/// runs once, not on the request path, and a purge that gives up too early leaves work.
pub const MIN_ADMIN_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Serials per DEL in single mode (4 keys each). Cluster mode deletes one certificate's keys
/// (one hash slot) per DEL.
const SERIALS_PER_DEL: usize = 128;
/// DEL commands in flight at once.
const PARALLEL_DELS: usize = 8;

/// What became of a purge.
#[derive(Debug)]
pub enum PurgeOutcome {
    /// Every target's keys are gone.
    Done { purged: usize },
    /// Redis failed; `pending` targets still have their keys (and their rows).
    Failed { purged: usize, pending: usize, error: String },
}

/// The Redis timeout the admin tool uses.
pub fn admin_redis_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.redis.timeout_ms).max(MIN_ADMIN_REDIS_TIMEOUT)
}

/// Deletes every target's keys, then settles the `pending_purges` rows: deleted for purged
/// targets, `attempts`/`last_error` updated for the others. Bookkeeping failures are
/// warnings: the rows only cause harmless repeated purges.
pub async fn purge(config: &Config, client: &Client, targets: &[PurgeTarget]) -> PurgeOutcome {
    if targets.is_empty() {
        return PurgeOutcome::Done { purged: 0 };
    }
    let (purged, error) = delete_keys(config, targets).await;
    let (done, left): (Vec<_>, Vec<_>) = targets.iter().enumerate().partition(|(i, _)| purged[*i]);
    let done: Vec<&PurgeTarget> = done.into_iter().map(|(_, t)| t).collect();
    let left: Vec<&PurgeTarget> = left.into_iter().map(|(_, t)| t).collect();
    if let Err(e) = settle(client, &done, None).await.map_err(|e| crate::db::error_text(&e)) {
        eprintln!("warning: Redis keys deleted, but the pending_purges rows could not be removed ({e}); responders will purge again, harmlessly");
    }
    match error {
        None => PurgeOutcome::Done { purged: done.len() },
        Some(error) => {
            if let Err(e) = settle(client, &left, Some(&error)).await.map_err(|e| crate::db::error_text(&e)) {
                eprintln!("warning: could not record the failed purge attempt: {e}");
            }
            PurgeOutcome::Failed { purged: done.len(), pending: left.len(), error }
        }
    }
}

/// Deletes keys; returns which targets were purged and the first error.
async fn delete_keys(config: &Config, targets: &[PurgeTarget]) -> (Vec<bool>, Option<String>) {
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
        Err(e) => return (purged, Some(e.to_string())),
    };
    let per_del = match config.redis.mode {
        RedisMode::Single => SERIALS_PER_DEL,
        _ => 1,
    };
    let prefix = &config.cache.key_prefix;
    let failed = AtomicBool::new(false);
    // Err(None): skipped because an earlier DEL failed.
    let results: Vec<(usize, usize, Result<(), Option<String>>)> =
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
                    let result = cache.delete(&keys).await.map_err(|e| Some(e.to_string()));
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

/// Prints the purge state after a status change; never fails the command.
pub fn report(outcome: &PurgeOutcome) {
    match outcome {
        PurgeOutcome::Done { purged } => {
            println!("cache: purged the cached responses of {purged} certificate(s)")
        }
        PurgeOutcome::Failed { purged, pending, error } => {
            if *purged > 0 {
                println!("cache: purged the cached responses of {purged} certificate(s)");
            }
            eprintln!("warning: could not purge the cached responses of {pending} certificate(s): {error}");
            eprintln!(
                "warning: the purge is pending (table pending_purges) and will be retried by the \
                 running responders; they were notified of the change and will not serve the old \
                 status. `jitocsp admin purge` retries it now."
            );
        }
    }
}

/// `admin purge --issuer NAME --serial HEX`: deletes that certificate's cached responses and
/// retries every pending purge. Redis failing is an operational failure here (exit 1).
pub async fn purge_command(args: CertArgs, config: &Config) -> Result<(), AdminError> {
    let serial = parse_serial(&args.serial, &Origin::Argument)?;
    let client = connect(config).await?;
    let issuer = find_issuer(&client, &args.issuer).await?;
    // Rows read now were committed before the keys are deleted, so deleting them settles them.
    let pending = client
        .query("SELECT issuer_id, serial, since FROM pending_purges ORDER BY since", &[])
        .await
        .map_err(db("reading pending_purges"))?;
    let mut targets = vec![PurgeTarget { issuer_id: issuer.id, serial: serial.clone(), since: None }];
    for row in &pending {
        let issuer_id: i32 = row.get(0);
        let bytes: Vec<u8> = row.get(1);
        let since: DateTime<Utc> = row.get(2);
        match Serial::from_signed_be(&bytes) {
            Ok(s) if issuer_id == issuer.id && s == serial => targets[0].since = Some(since),
            Ok(s) => targets.push(PurgeTarget { issuer_id, serial: s, since: Some(since) }),
            Err(e) => eprintln!(
                "warning: pending_purges has an unusable serial {} (issuer {issuer_id}): {e}",
                hex::encode(&bytes)
            ),
        }
    }
    let others = targets.len() - 1;
    match purge(config, &client, &targets).await {
        PurgeOutcome::Done { .. } => {
            println!("purged the cached responses of serial {serial} (issuer {:?})", issuer.name);
            println!("retried {others} other pending purge(s): all done");
            Ok(())
        }
        PurgeOutcome::Failed { purged, error, .. } => Err(AdminError::Cache {
            what: format!(
                "could not purge the cached responses of serial {serial} (issuer {:?}); \
                 {purged} of {} purges done",
                issuer.name,
                targets.len()
            ),
            detail: error,
        }),
    }
}
